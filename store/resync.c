/* resync.c - re-creates the store's durable (kiln-store) when nats-server
 * counts it past messages it never delivered to the store.
 *
 * Seen in a chaos run with nats-server 2.9.10 restarts: kiln-store went on
 * "delivering" (delivered 3985, nothing ack-pending, ack floor 820) while the
 * store received nothing for minutes. Every job request and transition in
 * between was lost to the store, and with interest retention the workers'
 * acks then removed them from KILN_JOBS, as the durable no longer wanted
 * them. A server restart did not mend it.
 *
 * The store acks a message only after it wrote it (its applied sequence, the
 * highest one written, moves first), so every message the durable counts as
 * handled - up to its ack floor, or up to its delivered sequence when
 * nothing is ack-pending - is at or below the applied sequence, or gone from
 * the stream (deleted). A message above the applied sequence that the
 * durable counts handled and that is still in the stream was passed over.
 * Seen in two rounds in a row, the durable is re-created to deliver from the
 * applied sequence + 1, so the store reads every such message still there
 * (and everything after). The messages already removed are gone; the sweep
 * and the consumers' stall checks repair their jobs.
 *
 * Deleting a durable of an interest stream removes the messages no other
 * durable wants, so a bridge durable (never read) that wants everything from
 * the same sequence on is created first and deleted after the new kiln-store
 * exists. A bridge left by a store that died in between is deleted by the
 * next round that finds kiln-store.
 *
 * The same server can also keep messages pending for a durable and answer
 * every fetch with nothing (seen for worker durables, consumer/stall.c; a
 * server restart delivered them). For kiln-store that freezes every job's
 * state, so when two looks a round apart find it counting messages pending,
 * nothing delivered, acked or applied in between, and a fetch begun after
 * the first look came back empty, the durable is re-created the same way. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "periodic.h"
#include "provision.h"
#include "resync.h"
#include "subjects.h"

#define RESYNC_BRIDGE "kiln-store-resync"
#define RESYNC_API_WAIT_MS 2000
#define RESYNC_PROBE 16 /* sequences looked at from each end of the suspect range */

struct resync {
    barrier *b;
    jsCtx *js;
    kiln_periodic *timer;
    bool bridge_up;   /* a bridge durable may exist */
    bool suspect;     /* the last round found a passed-over message */
    resync_look prev; /* the last round's look */
    bool have_prev;
    /* The applied sequence at the last re-creation, and how many in a row
     * found the store no further (the re-created durable passed over the
     * same messages again). */
    bool recreated;
    uint64_t recreated_at;
    unsigned recreated_again;
    kiln_metric *m_resyncs;
};

uint64_t resync_handled_upto(uint64_t delivered_seq, uint64_t ack_floor_seq, int64_t num_ack_pending)
{
    return num_ack_pending == 0 && delivered_seq > ack_floor_seq ? delivered_seq : ack_floor_seq;
}

bool resync_pending_stuck(const resync_look *prev, const resync_look *cur)
{
    return prev->num_pending > 0 && cur->num_pending > 0 && prev->num_ack_pending == 0 &&
           cur->num_ack_pending == 0 && cur->delivered_seq == prev->delivered_seq &&
           cur->applied_seq == prev->applied_seq && cur->idle_epoch > prev->fetch_epoch;
}

static void resync_opts(jsOptions *jo)
{
    if (jsOptions_Init(jo) == NATS_OK) jo->Wait = RESYNC_API_WAIT_MS;
}

/* Some message in [from, to] still in KILN_JOBS: the stream's first one if it
 * lies there, else one of the RESYNC_PROBE sequences at either end. */
static bool resync_find_present(resync *r, kiln_periodic *p, uint64_t from, uint64_t to, uint64_t *seq)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    resync_opts(&jo);
    if (js_GetStreamInfo(&si, r->js, KILN_STREAM_JOBS, &jo, &jerr) != NATS_OK) return false;
    uint64_t first = si->State.FirstSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (msgs > 0 && first >= from && first <= to) {
        *seq = first;
        return true;
    }
    for (uint64_t i = 0; i < RESYNC_PROBE && from + i <= to - i && !kiln_periodic_stopping(p); i++) {
        uint64_t probe[2] = {from + i, to - i};
        for (int k = 0; k < 2; k++) {
            natsStatus ns = NATS_OK;
            if (kiln_js_msg_present(r->js, KILN_STREAM_JOBS, probe[k], RESYNC_API_WAIT_MS, &ns, &jerr) ==
                KILN_OK) {
                *seq = probe[k];
                return true;
            }
        }
    }
    return false;
}

/* Adds durable name delivering from start_seq; one that exists already
 * (another process provisioned kiln-store meanwhile) is kept. */
static kiln_status resync_add(resync *r, const char *name, uint64_t start_seq)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    kiln_status st = kiln_provision_store_config(&cc, name, start_seq);
    if (st != KILN_OK) return st;
    resync_opts(&jo);
    natsStatus ns = js_AddConsumer(&ci, r->js, KILN_STREAM_JOBS, &cc, &jo, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (ns == NATS_OK || jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr) return KILN_OK;
    LOG_WARN("resync: adding durable failed durable=%s start_seq=%" PRIu64 " status=%s js_err=%d", name,
             start_seq, natsStatus_GetText(ns), (int)jerr);
    return kiln_nats_status(ns);
}

static kiln_status resync_delete(resync *r, const char *name)
{
    jsErrCode jerr = 0;
    jsOptions jo;
    resync_opts(&jo);
    natsStatus ns = js_DeleteConsumer(r->js, KILN_STREAM_JOBS, name, &jo, &jerr);
    if (ns == NATS_OK || jerr == JSConsumerNotFoundErr) return KILN_OK;
    LOG_WARN("resync: deleting durable failed durable=%s status=%s js_err=%d", name, natsStatus_GetText(ns),
             (int)jerr);
    return kiln_nats_status(ns);
}

static void resync_drop_bridge(resync *r)
{
    if (resync_delete(r, RESYNC_BRIDGE) == KILN_OK) r->bridge_up = false;
}

/* kiln-store again, from applied + 1, with the bridge holding the messages
 * from there on while there is none. A step that fails is left to the next
 * round (kiln-store missing: added; the bridge: deleted once kiln-store is
 * there). */
static void resync_recreate(resync *r, uint64_t applied)
{
    uint64_t start = applied + 1;
    if (resync_delete(r, RESYNC_BRIDGE) != KILN_OK) return;
    if (resync_add(r, RESYNC_BRIDGE, start) != KILN_OK) return;
    r->bridge_up = true;
    if (resync_delete(r, KILN_DURABLE_STORE) != KILN_OK) return;
    if (resync_add(r, KILN_DURABLE_STORE, start) != KILN_OK) return;
    resync_drop_bridge(r);
    kiln_metric_add(r->m_resyncs, 1);
    LOG_WARN("resync: durable re-created durable=%s start_seq=%" PRIu64, KILN_DURABLE_STORE, start);
    /* Chaos run 3117: after a SIGKILL recovery the re-created durable jumped
     * to the stream's end at every new message and delivered nothing, until
     * nats-server restarted. Only an operator can do that. */
    r->recreated_again = r->recreated && r->recreated_at == applied ? r->recreated_again + 1 : 0;
    r->recreated = true;
    r->recreated_at = applied;
    if (r->recreated_again > 0)
        LOG_ERROR("resync: the re-created durable delivered nothing again; restart nats-server (its "
                  "delivery to the store is broken, the jobs' results are not recorded meanwhile) "
                  "durable=%s applied_seq=%" PRIu64 " recreations_without_progress=%u",
                  KILN_DURABLE_STORE, applied, r->recreated_again);
}

/* Reads the durable's figures, then the apply loop's, into *look (and the
 * ack floor). False when JetStream did not tell; a missing durable (a
 * re-creation cut short, or deleted by hand: the store would receive
 * nothing) is added back from the applied sequence. */
static bool resync_look_now(resync *r, resync_look *look, uint64_t *handled_upto, uint64_t *ack_floor)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    resync_opts(&jo);
    natsStatus ns = js_GetConsumerInfo(&ci, r->js, KILN_STREAM_JOBS, KILN_DURABLE_STORE, &jo, &jerr);
    /* Read after the durable's figures: everything it counted acked then is
     * written by now. */
    uint64_t applied = barrier_applied_seq(r->b);
    if (ns != NATS_OK) {
        jsConsumerInfo_Destroy(ci);
        if (jerr == JSConsumerNotFoundErr) {
            LOG_WARN("resync: durable missing, adding it durable=%s start_seq=%" PRIu64, KILN_DURABLE_STORE,
                     applied + 1);
            if (resync_add(r, KILN_DURABLE_STORE, applied + 1) == KILN_OK && r->bridge_up) resync_drop_bridge(r);
        }
        return false;
    }
    *look = (resync_look){.delivered_seq = ci->Delivered.Stream,
                          .num_pending = (int64_t)ci->NumPending,
                          .num_ack_pending = ci->NumAckPending,
                          .applied_seq = applied};
    barrier_epochs(r->b, &look->fetch_epoch, &look->idle_epoch);
    *handled_upto = resync_handled_upto(ci->Delivered.Stream, ci->AckFloor.Stream, ci->NumAckPending);
    *ack_floor = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);
    return true;
}

static void resync_tick(kiln_periodic *p, void *arg)
{
    resync *r = arg;
    resync_look cur;
    uint64_t upto = 0, floor = 0;
    if (!resync_look_now(r, &cur, &upto, &floor)) {
        r->have_prev = false;
        return;
    }
    if (r->bridge_up) resync_drop_bridge(r);
    uint64_t applied = cur.applied_seq;

    /* Rule B: holding messages for the store and delivering none. */
    bool stuck = r->have_prev && resync_pending_stuck(&r->prev, &cur);
    r->prev = cur;
    r->have_prev = !stuck; /* after a re-creation the next look starts afresh */
    if (stuck) {
        LOG_WARN("resync: the store's durable holds messages for the store and delivers none "
                 "durable=%s applied_seq=%" PRIu64 " delivered_seq=%" PRIu64 " num_pending=%" PRId64,
                 KILN_DURABLE_STORE, applied, cur.delivered_seq, cur.num_pending);
        r->suspect = false;
        resync_recreate(r, applied);
        return;
    }

    /* Rule A: a message it counts handled that the store never applied. */
    uint64_t present = 0;
    if (upto <= applied || !resync_find_present(r, p, applied + 1, upto, &present)) {
        r->suspect = false;
        return;
    }
    LOG_WARN("resync: the store's durable counts a message handled that the store never applied "
             "durable=%s applied_seq=%" PRIu64 " delivered_seq=%" PRIu64 " ack_floor_seq=%" PRIu64
             " ack_pending=%" PRId64 " present_seq=%" PRIu64 " again=%d",
             KILN_DURABLE_STORE, applied, cur.delivered_seq, floor, cur.num_ack_pending, present,
             (int)r->suspect);
    r->suspect = !r->suspect;
    if (r->suspect) return; /* seen once: the next round decides */
    r->have_prev = false;
    resync_recreate(r, applied);
}

kiln_status resync_start(barrier *b, jsCtx *js, int64_t interval_ms, resync **out)
{
    *out = NULL;
    if (interval_ms <= 0) {
        LOG_INFO("durable check off");
        return KILN_OK;
    }
    resync *r = calloc(1, sizeof *r);
    if (r == NULL) return KILN_ENOMEM;
    r->b = b;
    r->js = js;
    r->bridge_up = true; /* one left by a store that stopped mid-way */
    r->m_resyncs = kiln_metric_counter("kiln_store_durable_resyncs_total",
                                       "times the store re-created its durable after nats-server "
                                       "passed over or withheld messages for it");
    if (kiln_periodic_start("kiln-resync", interval_ms, resync_tick, r, &r->timer) != KILN_OK) {
        free(r);
        return KILN_ERR;
    }
    *out = r;
    return KILN_OK;
}

void resync_stop(resync *r)
{
    if (r == NULL) return;
    kiln_periodic_stop(r->timer);
    free(r);
}
