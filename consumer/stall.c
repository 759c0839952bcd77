/* stall.c - stalled-message recovery: finds job messages a worker durable will
 * never deliver again and re-publishes them.
 *
 * nats-server 2.9.10 can lose a worker durable's ack-pending entries across a
 * restart (seen for jobs nak'd with a delay just before the stop): the message
 * stays in KILN_JOBS (interest retention, the worker never acked it) but the
 * durable counts it as handled. Every KILN_STALL_CHECK this thread looks, per
 * lane, at the lane's messages at or below the highest stream sequence the
 * durable has certainly finished with (its ack floor; its delivered sequence
 * when nothing is ack-pending). A worker acks a job's message only once the
 * job is terminal (or skipped as terminal/cancelled), so such a message that
 * is still in the stream, is the job's own copy (the store's request_seq) and
 * whose job the store (sync check) reports pending - or processing for longer
 * than an attempt can run (kiln_jobrec_abandoned: after a nats-server SIGKILL
 * the worker that ran it may be gone too) - was lost. It is published
 * again on its subject (headers Kiln-Redrive: <original seq>, Nats-Msg-Id:
 * <id>.redrive.<seq>) and the old copy deleted. Several consumer processes may
 * do this at once: the Nats-Msg-Id dedup and the idempotent delete make that
 * safe.
 *
 * The same server can also pass over a message above the delivered sequence:
 * the durable counts it pending, answers every fetch with nothing and never
 * delivers it (seen after a SIGTERM restart; a restart of nats-server
 * delivers it at once). When a durable counted messages pending in two rounds
 * in a row, delivered nothing in between, and answered a fetch of this
 * consumer with nothing meanwhile, the lane's messages above its delivered
 * sequence that were there a round ago are checked and re-driven the same
 * way: the copy gets a new sequence.
 *
 * And it can keep a message delivered and ack-pending for good, never
 * redelivered (seen for a message nak'd with a delay as the server
 * stopped). Such a message is the lowest one the durable has not had
 * acked, so it sits just above the ack floor for good. When that message's
 * job is due and pending, no consumer holds a copy (kiln.consumer.running),
 * and the same is still true after its AckWait or nak delay must have run
 * out, while the durable answered a fetch of this consumer with nothing,
 * the old copy is deleted and, if no consumer received it meanwhile,
 * published again.
 *
 * Last, it can come back from a crash counting messages ack-pending that
 * are gone from the stream (chaos run 2615): it tries to redeliver them for
 * good, each try uses up a pull request, and the lane's other jobs wait.
 * While that state is suspected (cons_stall_gone_suspected), a walk up from
 * the ack floor acks for the durable every sequence the stream no longer
 * holds: an ack of a sequence the durable does not count is a no-op, and
 * one it counts ends the entry. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "pb.h"
#include "queuestats.h"
#include "periodic.h"
#include "subjects.h"

#define STALL_SCAN_MAX 512      /* stream sequences looked at per lane per round */
#define STALL_BATCH_MAX 64      /* candidates per store check */
#define STALL_API_WAIT_MS 2000  /* JetStream API calls */
#define STALL_CHECK_TIMEOUT_MS 3000 /* kiln.store.check (sync waits up to 2 s in the store) */
#define STALL_ERR_LOG_MS 60000  /* at most one warning a minute for failing checks */
#define STALL_PENDING_SCAN_MAX 64 /* lane messages above the ack floor read per lane per round */
#define STALL_GONE_ACK_MAX 4096   /* gone sequences acked per lane per round */
#define STALL_GONE_LOOK_MAX 256   /* next-sequence lookups of that walk per lane per round */

typedef struct {
    const kiln_lane_info *def; /* name, subject, durable (common/queuestats.h) */
    uint64_t cursor;            /* next sequence to look at; scans resume here */
    cons_stall_obs seen;        /* the durable at the previous round */
    /* A durable found passing over messages: the delivered sequence it was
     * stuck at, and the part of [skip_cursor, skip_end] not looked at yet. */
    uint64_t skip_delivered, skip_cursor, skip_end;
    /* Above the ack floor: where the lowest lane message may be (below it
     * every sequence is gone or another subject's), and that message once
     * found due and held by nobody. */
    uint64_t pending_from;
    cons_stall_suspect suspect;
    /* While the durable may count gone messages ack-pending
     * (cons_stall_gone_suspected): where the walk acking them goes on. */
    uint64_t gone_from;
} stall_lane;

static stall_lane stall_lanes[] = {
    {.def = &kiln_lanes[KILN_LANE_HIGH]},
    {.def = &kiln_lanes[KILN_LANE_NORMAL]},
    {.def = &kiln_lanes[KILN_LANE_LOW]},
};
#define STALL_NLANES (sizeof stall_lanes / sizeof stall_lanes[0])

typedef struct {
    natsMsg *msg;               /* owned */
    uint64_t seq;
    uint64_t redrive_of;        /* its Kiln-Redrive value, 0 when none */
    int64_t not_before_ms;      /* its JobRequest's */
    char id[KILN_ID_MAX_LEN + 1];
} stall_cand;

/* Which kind of stalled message a re-drive is for (stall_redrive). */
typedef enum {
    STALL_LOST,    /* at or below the ack floor: never delivered again */
    STALL_SKIPPED, /* above the delivered sequence, passed over */
    STALL_UNHELD,  /* ack-pending, never redelivered, held by nobody */
} stall_kind;

static kiln_periodic *stall_timer;
static int64_t stall_last_err_log = -STALL_ERR_LOG_MS;
static kiln_metric *stall_m_redriven, *stall_m_skipped, *stall_m_gone_acked;

uint64_t cons_stall_upper(uint64_t delivered_stream, uint64_t ack_floor_stream,
                          int64_t num_ack_pending)
{
    /* Everything at or below the ack floor was acked; with nothing ack-pending,
     * everything delivered was. (2.9 moves the floor past skipped other-subject
     * sequences, so it can be above the delivered sequence.) */
    if (num_ack_pending == 0 && delivered_stream > ack_floor_stream) return delivered_stream;
    return ack_floor_stream;
}

bool cons_stall_window(uint64_t first_seq, uint64_t upper, uint64_t *cursor, uint64_t max,
                       uint64_t *from, uint64_t *to)
{
    if (max == 0 || first_seq == 0 || upper < first_seq) return false;
    uint64_t f = *cursor;
    if (f < first_seq || f > upper) f = first_seq; /* wrapped: start a new pass */
    uint64_t t = upper;
    if (t - f >= max) t = f + max - 1;
    *from = f;
    *to = t;
    *cursor = t + 1;
    return true;
}

bool cons_stall_should_redrive(uint64_t seq, uint64_t redrive_of, const cons_store_info *si)
{
    if (!si->answered || !si->known || si->request_seq == 0) return false;
    /* Only the job's own copy (or a re-drive of it): a second copy of the id
     * was acked as a duplicate while the job itself may still be waiting. */
    if (seq != si->request_seq && redrive_of != si->request_seq) return false;
    /* Processing: it may be running right now somewhere, unless it has been
     * for longer than an attempt can run. Terminal: done. */
    return si->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING || si->abandoned;
}

bool cons_stall_skipped_window(const cons_stall_obs *prev, const cons_stall_obs *now, int64_t empty_at_ms,
                               uint64_t max, uint64_t *from, uint64_t *to)
{
    if (!prev->valid || !now->valid || max == 0) return false;
    if (prev->num_pending == 0 || now->num_pending == 0) return false;
    /* Anything delivered in between: the durable moves. */
    if (now->delivered_stream != prev->delivered_stream || now->delivered_consumer != prev->delivered_consumer)
        return false;
    /* A full ack-pending window stops delivery by design. */
    if (now->max_ack_pending > 0 && now->num_ack_pending >= now->max_ack_pending) return false;
    /* This consumer asked after the previous round and was told "nothing". */
    if (empty_at_ms <= prev->at_ms) return false;
    uint64_t f = now->delivered_stream + 1, t = prev->last_seq;
    if (t < f) return false;
    if (t - f >= max) t = f + max - 1;
    *from = f;
    *to = t;
    return true;
}

bool cons_stall_unheld_overdue(const cons_stall_suspect *suspect, uint64_t seq, int64_t empty_at_ms,
                               int64_t settle_ms)
{
    return suspect->seq != 0 && suspect->seq == seq && empty_at_ms > suspect->at_ms + settle_ms;
}

bool cons_stall_gone_suspected(const cons_stall_obs *prev, const cons_stall_obs *now)
{
    return prev->valid && now->valid && now->num_ack_pending > 0 && now->num_redelivered > 0 &&
           now->ack_floor_stream == prev->ack_floor_stream;
}

static void stall_warn_rate_limited(const char *what, const char *lane, natsStatus s, jsErrCode jerr)
{
    int64_t now = kiln_mono_ms();
    if (now - stall_last_err_log < STALL_ERR_LOG_MS) return;
    stall_last_err_log = now;
    LOG_WARN("stall check failed step=%s lane=%s status=%s js_err=%d", what, lane,
             natsStatus_GetText(s), (int)jerr);
}

/* One sync kiln.store.check for the candidates' ids (the store must have
 * applied everything up to now); fills info[i]. */
static void stall_store_check(const stall_cand *c, size_t n, cons_store_info *info)
{
    const char *ids[STALL_BATCH_MAX];
    memset(info, 0, n * sizeof *info);
    if (n == 0 || n > STALL_BATCH_MAX) return;
    for (size_t i = 0; i < n; i++) ids[i] = c[i].id;
    kiln_status st = cons_store_check(ids, n, true, STALL_CHECK_TIMEOUT_MS, info);
    int64_t now = kiln_mono_ms();
    if (st != KILN_OK && now - stall_last_err_log >= STALL_ERR_LOG_MS) {
        stall_last_err_log = now;
        LOG_WARN("stall check failed step=store_check status=%s", kiln_status_str(st));
    }
}

/* Copies the original's headers except the ones the re-drive sets. */
static natsStatus stall_copy_headers(natsMsg *from, natsMsg *to)
{
    const char **keys = NULL;
    int nkeys = 0;
    natsStatus s = natsMsgHeader_Keys(from, &keys, &nkeys);
    if (s == NATS_NOT_FOUND) return NATS_OK;
    for (int i = 0; s == NATS_OK && i < nkeys; i++) {
        if (strcasecmp(keys[i], KILN_HDR_MSG_ID) == 0 || strcasecmp(keys[i], KILN_HDR_REDRIVE) == 0)
            continue;
        const char **vals = NULL;
        int nvals = 0;
        s = natsMsgHeader_Values(from, keys[i], &vals, &nvals);
        for (int v = 0; s == NATS_OK && v < nvals; v++) s = natsMsgHeader_Add(to, keys[i], vals[v]);
        free((void *)vals);
    }
    free((void *)keys);
    return s;
}

/* Deletes the candidate's message; true when it is gone (or was already). */
static bool stall_delete(const stall_lane *lane, const stall_cand *c, jsOptions *jo)
{
    jsErrCode jerr = 0;
    natsStatus ds = js_DeleteMsg(cons_g.js, KILN_STREAM_JOBS, c->seq, jo, &jerr);
    bool gone = ds == NATS_OK || ds == NATS_NOT_FOUND || jerr == JSSequenceNotFoundErr ||
                jerr == JSNoMessageFoundErr;
    if (!gone)
        LOG_WARN("stalled message delete failed job=%s lane=%s seq=%" PRIu64 " status=%s js_err=%d",
                 c->id, lane->def->name, c->seq, natsStatus_GetText(ds), (int)jerr);
    return gone;
}

/* Deletes a message the durable passed over; true when it is gone and the
 * durable had not delivered it before (its delivered sequence is still
 * below it), so a copy cannot run beside it. */
static bool stall_delete_undelivered(const stall_lane *lane, const stall_cand *c, jsOptions *jo)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (!stall_delete(lane, c, jo)) return false;
    natsStatus s = js_GetConsumerInfo(&ci, cons_g.js, KILN_STREAM_JOBS, lane->def->durable, jo, &jerr);
    if (s != NATS_OK) {
        stall_warn_rate_limited("consumer_info", lane->def->name, s, jerr);
        return false; /* unknown: the sweep re-drives it if it is still pending */
    }
    bool undelivered = ci->Delivered.Stream < c->seq;
    jsConsumerInfo_Destroy(ci);
    if (!undelivered)
        LOG_INFO("skipped message was delivered meanwhile job=%s lane=%s seq=%" PRIu64, c->id, lane->def->name,
                 c->seq);
    return undelivered;
}

/* Whether this consumer holds a copy of seq (fetched, held back or running). */
static bool stall_held_here(uint64_t seq)
{
    uint64_t here = 0;
    return cons_registry_held_seqs(&seq, 1, &here) > 0;
}

/* Whether another consumer holds a copy of seq; asked, with
 * CONS_PEER_REASK_MS for their answers. Unknown (NATS gone meanwhile)
 * counts as held. */
static bool stall_held_by_peer(uint64_t seq)
{
    bool held = false;
    (void)cons_peers_ask(&seq, 1, CONS_PEER_REASK_MS, &held);
    return held || natsConnection_Status(cons_g.nc) != NATS_CONN_STATUS_CONNECTED;
}

/* Deletes an ack-pending message nobody held; true when it is gone and no
 * consumer received it just before (that one runs it; acking a deleted
 * message is harmless). */
static bool stall_delete_unheld(const stall_lane *lane, const stall_cand *c, jsOptions *jo)
{
    if (!stall_delete(lane, c, jo)) return false;
    if (!stall_held_here(c->seq) && !stall_held_by_peer(c->seq)) return true;
    LOG_INFO("ack-pending message was delivered again meanwhile, left to its holder job=%s lane=%s "
             "seq=%" PRIu64,
             c->id, lane->def->name, c->seq);
    return false;
}

/* Publishes the candidate again (waits for the JetStream ack), then deletes
 * the old copy. A skipped one (above the delivered sequence, so the durable
 * could still deliver it meanwhile) is deleted first and published again
 * only when the durable had not delivered it by then, and an unheld one
 * only when no consumer received it by then: never two runnable copies at
 * once. A job left without a copy is the store's sweep's ("pending and
 * gone"). */
static void stall_redrive(const stall_lane *lane, const stall_cand *c, stall_kind kind)
{
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsOptions jo;
    jsErrCode jerr = 0;
    char msg_id[KILN_ID_MAX_LEN + 48], orig[24];
    uint64_t orig_seq = c->redrive_of != 0 ? c->redrive_of : c->seq;

    snprintf(msg_id, sizeof msg_id, "%s.redrive.%" PRIu64, c->id, c->seq);
    snprintf(orig, sizeof orig, "%" PRIu64, orig_seq);
    if (jsOptions_Init(&jo) == NATS_OK) jo.Wait = STALL_API_WAIT_MS;
    if (kind == STALL_SKIPPED && !stall_delete_undelivered(lane, c, &jo)) return;
    if (kind == STALL_UNHELD && !stall_delete_unheld(lane, c, &jo)) return;
    natsStatus s = natsMsg_Create(&m, lane->def->subject, NULL, natsMsg_GetData(c->msg),
                                  natsMsg_GetDataLength(c->msg));
    if (s == NATS_OK) s = stall_copy_headers(c->msg, m);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_REDRIVE, orig);
    if (s == NATS_OK) s = jsPubOptions_Init(&po);
    if (s == NATS_OK) {
        po.MsgId = msg_id;
        po.ExpectStream = KILN_STREAM_JOBS;
        po.MaxWait = STALL_API_WAIT_MS;
        s = js_PublishMsg(&pa, cons_g.js, m, &po, &jerr);
    }
    if (s != NATS_OK) {
        LOG_WARN("stalled message re-drive publish failed job=%s lane=%s seq=%" PRIu64
                 " status=%s js_err=%d",
                 c->id, lane->def->name, c->seq, natsStatus_GetText(s), (int)jerr);
        goto out;
    }
    /* Only now the old copy may go: the new one is stored. */
    if (kind == STALL_LOST) (void)stall_delete(lane, c, &jo);
    LOG_WARN("stalled message re-driven job=%s lane=%s seq=%" PRIu64 " orig_seq=%" PRIu64
             " new_seq=%" PRIu64 " duplicate=%d",
             c->id, lane->def->name, c->seq, orig_seq, pa->Sequence, (int)pa->Duplicate);
    if (!pa->Duplicate) kiln_metric_add(stall_m_redriven, 1);
out:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
}

static void stall_flush(const stall_lane *lane, stall_cand *c, size_t *n, stall_kind kind)
{
    cons_store_info info[STALL_BATCH_MAX];
    stall_store_check(c, *n, info);
    for (size_t i = 0; i < *n; i++) {
        if (cons_stall_should_redrive(c[i].seq, c[i].redrive_of, &info[i]))
            stall_redrive(lane, &c[i], kind);
        else
            LOG_DEBUG("stall check keeps job=%s lane=%s seq=%" PRIu64 " answered=%d known=%d state=%s "
                      "request_seq=%" PRIu64,
                      c[i].id, lane->def->name, c[i].seq, (int)info[i].answered, (int)info[i].known,
                      kiln_state_name(info[i].state), info[i].request_seq);
        natsMsg_Destroy(c[i].msg);
        c[i].msg = NULL;
    }
    *n = 0;
}

/* Reads the candidate at seq (if it is a decodable job on the lane's subject). */
static bool stall_candidate(const stall_lane *lane, natsMsg *m, uint64_t seq, stall_cand *c)
{
    const char *subj = natsMsg_GetSubject(m);
    const char *hv = NULL;
    if (subj == NULL || strcmp(subj, lane->def->subject) != 0) return false;
    int len = natsMsg_GetDataLength(m);
    if (len <= 0 || len > KILN_PB_MAX_BYTES) return false;
    Kiln__V1__JobRequest *r =
        kiln__v1__job_request__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m));
    if (r == NULL) return false;
    bool ok = r->id != NULL && kiln_jobreq_id_ok(r->id);
    if (ok) snprintf(c->id, sizeof c->id, "%s", r->id);
    c->not_before_ms = r->not_before_ms;
    kiln__v1__job_request__free_unpacked(r, NULL);
    if (!ok) return false;
    c->seq = seq;
    c->redrive_of = 0;
    if (natsMsgHeader_Get(m, KILN_HDR_REDRIVE, &hv) == NATS_OK && hv != NULL)
        c->redrive_of = strtoull(hv, NULL, 10);
    c->msg = m;
    return true;
}

/* What stall_read found at a stream sequence. */
typedef enum { STALL_READ_FAILED, STALL_READ_NONE, STALL_READ_CAND } stall_read_result;

/* Reads the lane's job at seq into *c: STALL_READ_CAND, or STALL_READ_NONE
 * when the sequence is gone (acked by all) or holds no job of this lane,
 * or STALL_READ_FAILED when JetStream did not answer (warned). */
static stall_read_result stall_read(const stall_lane *lane, uint64_t seq, jsOptions *jo, stall_cand *c)
{
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(&m, cons_g.js, KILN_STREAM_JOBS, seq, jo, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) return STALL_READ_NONE;
    if (s != NATS_OK) {
        stall_warn_rate_limited("get_msg", lane->def->name, s, jerr);
        return STALL_READ_FAILED;
    }
    if (stall_candidate(lane, m, seq, c)) return STALL_READ_CAND;
    natsMsg_Destroy(m);
    return STALL_READ_NONE;
}

/* Looks at the lane's messages in [from, to] and re-drives the lost ones.
 * Returns false when a JetStream call failed at seq (*failed_at). */
static bool stall_scan(stall_lane *lane, uint64_t from, uint64_t to, stall_kind kind, uint64_t *failed_at)
{
    jsOptions jo;
    stall_cand cands[STALL_BATCH_MAX];
    size_t nc = 0;
    bool ok = true;

    if (jsOptions_Init(&jo) == NATS_OK) jo.Wait = STALL_API_WAIT_MS;
    for (uint64_t seq = from; seq <= to && !atomic_load(&cons_g.stopping); seq++) {
        stall_read_result r = stall_read(lane, seq, &jo, &cands[nc]);
        if (r == STALL_READ_FAILED) {
            *failed_at = seq;
            ok = false;
            break;
        }
        if (r == STALL_READ_CAND && ++nc == STALL_BATCH_MAX) stall_flush(lane, cands, &nc, kind);
    }
    if (nc > 0) stall_flush(lane, cands, &nc, kind);
    return ok;
}

/* Acks [from, to], sequences the stream no longer holds, for the lane's
 * durable; returns how many acks went out. The server finds an entry by its
 * stream sequence and reads the delivery sequence from the entry; for a
 * sequence it does not count, delivery sequence 0 moves no ack floor. */
static uint64_t stall_ack_gone(const stall_lane *lane, uint64_t from, uint64_t to)
{
    char subj[200];
    uint64_t sent = 0;
    for (uint64_t seq = from; seq <= to; seq++) {
        snprintf(subj, sizeof subj, "$JS.ACK.%s.%s.1.%" PRIu64 ".0.0.0", KILN_STREAM_JOBS, lane->def->durable,
                 seq);
        if (natsConnection_PublishString(cons_g.ack_nc, subj, "+ACK") != NATS_OK) break;
        sent++;
    }
    return sent;
}

/* What one round's walk acked: all of it lies in [from, to]. */
typedef struct {
    uint64_t from, to, acked;
} stall_gone_acks;

/* Acks, for the lane's durable, the sequences in (floor, delivered] that
 * the stream no longer holds, from where the previous round stopped: at
 * most STALL_GONE_ACK_MAX acks and STALL_GONE_LOOK_MAX lookups a round.
 * Messages still there are passed; they are the other rules' business. */
static void stall_ack_gone_walk(stall_lane *lane, uint64_t floor, uint64_t delivered, stall_gone_acks *gone)
{
    if (lane->gone_from <= floor || lane->gone_from > delivered + 1) lane->gone_from = floor + 1;
    for (int looked = 0; lane->gone_from <= delivered && looked < STALL_GONE_LOOK_MAX &&
                         gone->acked < STALL_GONE_ACK_MAX && !atomic_load(&cons_g.stopping);
         looked++) {
        uint64_t next = 0;
        cons_nextseq_result nr = cons_nextseq(lane->gone_from, NULL, STALL_API_WAIT_MS, &next);
        if (nr == CONS_NEXTSEQ_FAILED) {
            stall_warn_rate_limited("next_seq", lane->def->name, NATS_ERR, 0);
            return;
        }
        uint64_t to = nr == CONS_NEXTSEQ_NONE || next > delivered ? delivered : next - 1;
        if (to >= lane->gone_from) {
            uint64_t budget = STALL_GONE_ACK_MAX - gone->acked;
            if (to - lane->gone_from >= budget) to = lane->gone_from + budget - 1;
            uint64_t sent = stall_ack_gone(lane, lane->gone_from, to);
            if (sent > 0) {
                if (gone->acked == 0) gone->from = lane->gone_from;
                gone->to = lane->gone_from + sent - 1;
                gone->acked += sent;
            }
            lane->gone_from += sent;
            if (lane->gone_from <= to) return; /* a publish failed: resume here */
        }
        if (nr == CONS_NEXTSEQ_FOUND && next == lane->gone_from) lane->gone_from = next + 1;
    }
}

/* The lowest lane message above the ack floor (at or below the delivered
 * sequence) still in the stream, from where the previous round stopped;
 * false when none was found. Sequences gone or of other subjects never come
 * back: passed for good, a run of them in one request (chaos run 3126:
 * 2 600 of them lay between the floor and a lost retry, which a walk of 64
 * a round would have reached after seven minutes). At most
 * STALL_PENDING_SCAN_MAX lane messages are read a round. */
static bool stall_lowest_pending(stall_lane *lane, uint64_t floor, uint64_t delivered, stall_cand *c)
{
    jsOptions jo;
    if (jsOptions_Init(&jo) == NATS_OK) jo.Wait = STALL_API_WAIT_MS;
    /* (Above the delivered sequence + 1 only if the stream started over.) */
    if (lane->pending_from <= floor || lane->pending_from > delivered + 1) lane->pending_from = floor + 1;
    for (int looked = 0; lane->pending_from <= delivered && looked < STALL_PENDING_SCAN_MAX; looked++) {
        uint64_t next = 0;
        cons_nextseq_result nr = cons_nextseq(lane->pending_from, lane->def->subject, STALL_API_WAIT_MS, &next);
        if (nr == CONS_NEXTSEQ_FAILED) {
            stall_warn_rate_limited("next_seq", lane->def->name, NATS_ERR, 0);
            return false;
        }
        if (nr == CONS_NEXTSEQ_NONE || next > delivered) {
            lane->pending_from = delivered + 1;
            return false;
        }
        lane->pending_from = next;
        stall_read_result r = stall_read(lane, next, &jo, c);
        if (r == STALL_READ_FAILED) return false;
        if (r == STALL_READ_CAND) return true;
        lane->pending_from++; /* gone meanwhile, or not a job */
    }
    return false;
}

/* Due by the store's record (retry time) and the request (delay)? */
static bool stall_due(const stall_cand *c, const cons_store_info *si)
{
    int64_t due = si->retry_at_ms > c->not_before_ms ? si->retry_at_ms : c->not_before_ms;
    return due <= kiln_now_ms();
}

/* A message the durable keeps ack-pending and never delivers again: found
 * once (the suspect), re-driven when found again after its AckWait or nak
 * delay must have run out, with an empty fetch of this consumer since. */
static void stall_check_unheld(stall_lane *lane, uint64_t floor, uint64_t delivered, int64_t empty_at)
{
    stall_cand c;
    if (!stall_lowest_pending(lane, floor, delivered, &c)) {
        lane->suspect.seq = 0;
        return;
    }
    int64_t ack_wait = cons_g.set->ack_wait_ms, cap = cons_g.set->retry_cap_ms;
    int64_t settle = (ack_wait > cap ? ack_wait : cap) + ack_wait;
    bool again = lane->suspect.seq == c.seq;
    if (again && !cons_stall_unheld_overdue(&lane->suspect, c.seq, empty_at, settle)) goto out;
    /* Found again only if every check below passes again (at_ms stays
     * for the log). Cheapest first: mostly the lowest unacked message runs
     * here. */
    cons_store_info si;
    lane->suspect.seq = 0;
    if (stall_held_here(c.seq)) goto out;
    stall_store_check(&c, 1, &si);
    if (si.answered && si.known && kiln_state_is_terminal(si.state)) {
        /* Finished: nothing to keep an eye on, and the walk goes on above it
         * next round (a message the server failed to remove holds it
         * otherwise for good, seen in run 2615). */
        lane->pending_from = c.seq + 1;
        goto out;
    }
    if (!cons_stall_should_redrive(c.seq, c.redrive_of, &si) || !stall_due(&c, &si) ||
        stall_held_by_peer(c.seq))
        goto out;
    if (!again) {
        lane->suspect = (cons_stall_suspect){c.seq, kiln_mono_ms()};
        /* Common and harmless (a dead consumer's job before its AckWait ran
         * out, a gate hand-back): only a re-drive is worth a warning. */
        LOG_DEBUG("durable keeps a due job's message that no consumer holds, watching it job=%s lane=%s "
                 "seq=%" PRIu64,
                 c.id, lane->def->name, c.seq);
        goto out;
    }
    LOG_WARN("durable keeps a message ack-pending that no consumer holds and does not deliver it "
             "again job=%s lane=%s seq=%" PRIu64 " watched_ms=%lld",
             c.id, lane->def->name, c.seq, (long long)(kiln_mono_ms() - lane->suspect.at_ms));
    stall_redrive(lane, &c, STALL_UNHELD);
out:
    natsMsg_Destroy(c.msg);
}

/* Messages gone from the stream that the durable may count ack-pending. */
static void stall_check_gone(stall_lane *lane, uint64_t floor, uint64_t delivered)
{
    stall_gone_acks gone = {0};
    stall_ack_gone_walk(lane, floor, delivered, &gone);
    if (gone.acked == 0) return;
    kiln_metric_add(stall_m_gone_acked, (int64_t)gone.acked);
    LOG_INFO("durable may count messages ack-pending that are gone from the stream; acked the gone "
             "sequences for it lane=%s durable=%s seq=%" PRIu64 "..%" PRIu64 " acked=%" PRIu64,
             lane->def->name, lane->def->durable, gone.from, gone.to, gone.acked);
}

static void stall_check_lane(stall_lane *lane, uint64_t first_seq, uint64_t last_seq)
{
    jsConsumerInfo *ci = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    uint64_t from = 0, to = 0, failed_at = 0;

    if (jsOptions_Init(&jo) == NATS_OK) jo.Wait = STALL_API_WAIT_MS;
    natsStatus s =
        js_GetConsumerInfo(&ci, cons_g.js, KILN_STREAM_JOBS, lane->def->durable, &jo, &jerr);
    if (s != NATS_OK) {
        lane->seen.valid = false; /* a gap: the next round starts over */
        stall_warn_rate_limited("consumer_info", lane->def->name, s, jerr);
        return;
    }
    cons_stall_obs now = {
        .valid = true,
        .at_ms = kiln_mono_ms(),
        .delivered_stream = ci->Delivered.Stream,
        .delivered_consumer = ci->Delivered.Consumer,
        .num_pending = ci->NumPending,
        .num_ack_pending = ci->NumAckPending,
        .max_ack_pending = ci->Config != NULL ? ci->Config->MaxAckPending : 0,
        .num_redelivered = ci->NumRedelivered,
        .ack_floor_stream = ci->AckFloor.Stream,
        .last_seq = last_seq,
    };
    /* The walk goes on from round to round while the suspicion lasts and
     * starts from the floor only in a new episode: starting over each
     * round would ack a long-running job's range again and again. */
    if (!cons_stall_gone_suspected(&lane->seen, &now)) lane->gone_from = 0;
    else stall_check_gone(lane, now.ack_floor_stream, now.delivered_stream);
    uint64_t upper = cons_stall_upper(ci->Delivered.Stream, ci->AckFloor.Stream, ci->NumAckPending);
    uint64_t floor = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);

    /* Messages above the delivered sequence that the durable passed over:
     * once per stuck delivered sequence (an episode), the lane's messages
     * that were there when it was found, STALL_SCAN_MAX per round. */
    int64_t empty_at = cons_fetcher_empty_at((int)(lane->def - kiln_lanes));
    if (cons_stall_skipped_window(&lane->seen, &now, empty_at, UINT64_MAX, &from, &to)) {
        if (lane->skip_delivered != now.delivered_stream || lane->skip_end == 0) {
            LOG_WARN("durable delivers none of its pending messages lane=%s durable=%s pending=%" PRIu64
                     " delivered_seq=%" PRIu64 "; checking seq=%" PRIu64 "..%" PRIu64,
                     lane->def->name, lane->def->durable, now.num_pending, now.delivered_stream, from, to);
            kiln_metric_add(stall_m_skipped, 1);
            lane->skip_delivered = now.delivered_stream;
            lane->skip_cursor = from;
            lane->skip_end = to;
        }
        if (lane->skip_cursor <= lane->skip_end) {
            from = lane->skip_cursor;
            to = lane->skip_end - from >= STALL_SCAN_MAX ? from + STALL_SCAN_MAX - 1 : lane->skip_end;
            lane->skip_cursor = stall_scan(lane, from, to, STALL_SKIPPED, &failed_at) ? to + 1 : failed_at;
        }
    }
    lane->seen = now;

    /* The lowest message it keeps ack-pending, if nobody holds it. */
    if (now.num_ack_pending > 0) stall_check_unheld(lane, floor, now.delivered_stream, empty_at);
    else lane->suspect.seq = 0;

    /* Messages at or below it that it lost track of. */
    if (!cons_stall_window(first_seq, upper, &lane->cursor, STALL_SCAN_MAX, &from, &to)) return;
    if (!stall_scan(lane, from, to, STALL_LOST, &failed_at)) lane->cursor = failed_at; /* resume here next round */
}

/* A round was missed (NATS unreachable, nothing retained): the next one
 * compares with nothing, so "two rounds in a row" stays two rounds. */
static void stall_forget_rounds(void)
{
    for (size_t i = 0; i < STALL_NLANES; i++) {
        stall_lanes[i].seen.valid = false;
        stall_lanes[i].suspect.seq = 0;
    }
}

static void stall_round(void)
{
    jsStreamInfo *si = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    if (jsOptions_Init(&jo) == NATS_OK) jo.Wait = STALL_API_WAIT_MS;
    natsStatus s = js_GetStreamInfo(&si, cons_g.js, KILN_STREAM_JOBS, &jo, &jerr);
    if (s != NATS_OK) {
        stall_forget_rounds();
        stall_warn_rate_limited("stream_info", "-", s, jerr);
        return;
    }
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (msgs == 0) { /* nothing retained, nothing lost */
        stall_forget_rounds();
        return;
    }
    for (size_t i = 0; i < STALL_NLANES && !atomic_load(&cons_g.stopping); i++)
        stall_check_lane(&stall_lanes[i], first, last);
}

static void stall_tick(kiln_periodic *p, void *arg)
{
    (void)p;
    (void)arg;
    if (!atomic_load(&cons_g.stopping) &&
        natsConnection_Status(cons_g.nc) == NATS_CONN_STATUS_CONNECTED)
        stall_round();
    else
        stall_forget_rounds();
}

kiln_status cons_stall_start(void)
{
    if (cons_g.set->stall_check_ms <= 0) {
        LOG_INFO("stall check off");
        return KILN_OK;
    }
    stall_m_redriven = kiln_metric_counter("kiln_consumer_stalled_redriven_total",
                                           "lost job messages published again by the stall check");
    stall_m_skipped = kiln_metric_counter(
        "kiln_consumer_stalled_durables_total",
        "stall rounds that found a durable holding pending messages it would not deliver");
    stall_m_gone_acked = kiln_metric_counter(
        "kiln_consumer_stalled_gone_acked_total",
        "sequences gone from KILN_JOBS that the stall check acked for a worker durable that may count "
        "them ack-pending");
    if (kiln_periodic_start("kiln-stall", cons_g.set->stall_check_ms, stall_tick, NULL,
                            &stall_timer) != KILN_OK)
        return KILN_ERR;
    LOG_INFO("stall check started interval_ms=%lld", (long long)cons_g.set->stall_check_ms);
    return KILN_OK;
}

void cons_stall_stop(void)
{
    kiln_periodic_stop(stall_timer);
    stall_timer = NULL;
}
