/* queuestats.c - queue depths from JetStream consumer and stream info. */
#include <jansson.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "lanepause.h"
#include "natsconn.h"
#include "queuestats.h"
#include "subjects.h"

const kiln_lane_info kiln_lanes[KILN_LANES] = {
    {"high", KILN_SUBJ_GENERATE_HIGH, KILN_DURABLE_HIGH, "lane=\"high\""},
    {"normal", KILN_SUBJ_GENERATE, KILN_DURABLE_NORMAL, "lane=\"normal\""},
    {"low", KILN_SUBJ_GENERATE_LOW, KILN_DURABLE_LOW, "lane=\"low\""},
};

#define QUEUESTATS_WAIT_MS 2000 /* the oldest-message request */

static bool queuestats_absent(natsStatus s, jsErrCode jerr) {
    return s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr;
}

/* Unix ms of a JetStream time ("2026-12-06T04:47:46.031272164Z"); 0 when
 * it does not read. */
static int64_t queuestats_time_ms(const char *t) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = t != NULL ? strptime(t, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (rest == NULL) return 0;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    if (*rest == '.') {
        int64_t scale = 100;
        for (rest++; *rest >= '0' && *rest <= '9'; rest++, scale /= 10)
            ms += (*rest - '0') * scale;
    }
    return *rest == 'Z' ? ms : 0;
}

/* How long the lane's oldest message not yet delivered has waited: the
 * first message on its subject after the durable's last delivered sequence
 * (STREAM.MSG.GET with next_by_subj, which nats-server 2.9 answers; nats.c
 * 3.4.1 has no call for it). 0 when there is none. */
static kiln_status queuestats_oldest(natsConnection *nc, const char *subject, uint64_t after_seq,
                                     int64_t *age_ms) {
    char body[256];
    natsMsg *reply = NULL;
    *age_ms = 0;
    int n = snprintf(body, sizeof body, "{\"seq\":%llu,\"next_by_subj\":\"%s\"}",
                     (unsigned long long)after_seq + 1, subject);
    natsStatus s = natsConnection_Request(&reply, nc, "$JS.API.STREAM.MSG.GET." KILN_STREAM_JOBS,
                                          body, n, QUEUESTATS_WAIT_MS);
    if (s != NATS_OK) return kiln_nats_status(s);
    json_t *o = json_loadb(natsMsg_GetData(reply) != NULL ? natsMsg_GetData(reply) : "",
                           (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    /* No such message (it was taken meanwhile) answers an error: nothing waits. */
    int64_t stored = queuestats_time_ms(
        json_string_value(json_object_get(json_object_get(o, "message"), "time")));
    json_decref(o);
    if (stored > 0) {
        int64_t age = kiln_now_ms() - stored;
        *age_ms = age > 0 ? age : 1;
    }
    return KILN_OK;
}

static kiln_status queuestats_durable(jsCtx *js, const char *durable, kiln_queue_durable *out,
                                      uint64_t *delivered_seq) {
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    memset(out, 0, sizeof *out);
    natsStatus s = js_GetConsumerInfo(&ci, js, KILN_STREAM_JOBS, durable, NULL, &jerr);
    if (s != NATS_OK) return queuestats_absent(s, jerr) ? KILN_OK : kiln_nats_status(s);
    out->present = true;
    out->waiting = ci->NumPending;
    out->held = ci->NumAckPending;
    out->redelivered = ci->NumRedelivered;
    if (delivered_seq != NULL) *delivered_seq = ci->Delivered.Stream;
    jsConsumerInfo_Destroy(ci);
    return KILN_OK;
}

kiln_status kiln_queue_stats_read(natsConnection *nc, jsCtx *js, kiln_queue_stats *out) {
    if (nc == NULL || js == NULL || out == NULL) return KILN_EINVAL;
    memset(out, 0, sizeof *out);
    kiln_status st = KILN_OK;
    for (int i = 0; i < KILN_LANES && st == KILN_OK; i++) {
        uint64_t delivered = 0;
        kiln_queue_durable *d = &out->lanes[i];
        st = queuestats_durable(js, kiln_lanes[i].durable, d, &delivered);
        if (st == KILN_OK && d->waiting > 0)
            st = queuestats_oldest(nc, kiln_lanes[i].subject, delivered, &d->oldest_waiting_ms);
    }
    if (st == KILN_OK) st = queuestats_durable(js, KILN_DURABLE_STORE, &out->store, NULL);
    bool paused[KILN_LANES];
    if (st == KILN_OK) st = kiln_lane_pause_read(js, paused, NULL);
    if (st != KILN_OK) return st;
    for (int i = 0; i < KILN_LANES; i++)
        out->lanes[i].paused = paused[i];

    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, KILN_STREAM_DEAD, NULL, &jerr);
    if (s != NATS_OK) return queuestats_absent(s, jerr) ? KILN_OK : kiln_nats_status(s);
    out->dead_present = true;
    out->dead_letters = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return KILN_OK;
}
