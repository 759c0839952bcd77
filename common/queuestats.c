/* queuestats.c - queue depths from JetStream consumer and stream info. */
#include <string.h>

#include "lanepause.h"
#include "natsconn.h"
#include "queuestats.h"
#include "subjects.h"

const char *const kiln_lane_names[KILN_LANES] = {"high", "normal", "low"};

static const char *const queuestats_durables[KILN_LANES] = {
    KILN_DURABLE_HIGH, KILN_DURABLE_NORMAL, KILN_DURABLE_LOW};

static bool queuestats_absent(natsStatus s, jsErrCode jerr)
{
    return s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr;
}

static kiln_status queuestats_durable(jsCtx *js, const char *durable, kiln_queue_durable *out)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    memset(out, 0, sizeof *out);
    natsStatus s = js_GetConsumerInfo(&ci, js, KILN_STREAM_JOBS, durable, NULL, &jerr);
    if (s != NATS_OK) return queuestats_absent(s, jerr) ? KILN_OK : kiln_nats_status(s);
    out->present = true;
    out->waiting = ci->NumPending;
    out->held = ci->NumAckPending;
    out->redelivered = ci->NumRedelivered;
    jsConsumerInfo_Destroy(ci);
    return KILN_OK;
}

kiln_status kiln_queue_stats_read(jsCtx *js, kiln_queue_stats *out)
{
    if (js == NULL || out == NULL) return KILN_EINVAL;
    memset(out, 0, sizeof *out);
    kiln_status st = KILN_OK;
    for (int i = 0; i < KILN_LANES && st == KILN_OK; i++)
        st = queuestats_durable(js, queuestats_durables[i], &out->lanes[i]);
    if (st == KILN_OK) st = queuestats_durable(js, KILN_DURABLE_STORE, &out->store);
    bool paused[KILN_LANES];
    if (st == KILN_OK) st = kiln_lane_pause_read(js, paused, NULL);
    if (st != KILN_OK) return st;
    for (int i = 0; i < KILN_LANES; i++) out->lanes[i].paused = paused[i];

    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, KILN_STREAM_DEAD, NULL, &jerr);
    if (s != NATS_OK) return queuestats_absent(s, jerr) ? KILN_OK : kiln_nats_status(s);
    out->dead_present = true;
    out->dead_letters = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return KILN_OK;
}
