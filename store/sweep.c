/* sweep.c - re-publishes pending jobs whose JobRequest vanished from KILN_JOBS
 * (and processing ones abandoned for longer than an attempt can run, whose
 * request vanished: nats-server 2.9.10 after a SIGKILL).
 *
 * nats-server 2.9.10 sometimes loses, at a restart, a JobRequest a consumer
 * had nak'd with a delay: the message is gone from the stream and the job
 * would stay pending forever. With interest retention a pending job's
 * request stays in KILN_JOBS until the worker durable acks it, which happens
 * only once the job is terminal. So a job that is pending, whose start time
 * has passed and whose request (or our last re-drive of it) is no longer in
 * the stream was lost - once the apply loop has caught up (a COMPLETED may be
 * in flight: the worker acks only after that transition is stored). It is
 * published again from its record on its lane subject with headers
 * Kiln-Redrive: <request_seq> (the consumer runs such a copy while the job is
 * pending) and Nats-Msg-Id: <id>.redrive.<lost seq>, the id the consumer's
 * stall check uses too, so both re-driving the same copy store it once.
 *
 * Pending (and processing) jobs are found in by_user_state
 * ([len][user][state][...]): the scan seeks from one user's PENDING range,
 * through the PROCESSING range after it, to the next user, so a round costs
 * O(users + pending and processing jobs); at most SWEEP_CHECK_MAX overdue jobs are checked
 * per round and the next round resumes after the last one. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "jobreq.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pb.h"
#include "periodic.h"
#include "subjects.h"
#include "sweep.h"

/* The scan visits a user's PENDING range and the PROCESSING range after it. */
_Static_assert(KILN__V1__JOB_STATE__JOB_STATE_PROCESSING == KILN__V1__JOB_STATE__JOB_STATE_PENDING + 1,
               "PROCESSING must follow PENDING in by_user_state");

#define SWEEP_CHECK_MAX 1000             /* overdue pending jobs checked (and re-driven) per round */
/* The first round comes this soon after start (or one interval, if shorter):
 * a store restarted more often than its interval would never sweep. */
#define SWEEP_FIRST_MS 5000
/* A round that stopped at SWEEP_CHECK_MAX is followed after interval/10 (at
 * least this), so a pass over a large backlog is not one interval per 1000. */
#define SWEEP_MORE_MIN_MS 1000
#define SWEEP_API_WAIT_MS 2000           /* JetStream API calls */
#define SWEEP_TRACK_MAX 1024             /* re-drives remembered (to skip copies still queued) */
#define SWEEP_ERR_LOG_MS 60000           /* at most one failure warning a minute */

typedef struct {
    char id[KILN_ID_MAX_LEN + 1];
    uint64_t request_seq;
    uint64_t copy_seq; /* stream sequence of our re-driven copy */
} sweep_track;

/* A due job whose request (or our last copy of it) is gone from the stream. */
typedef struct {
    char id[KILN_ID_MAX_LEN + 1];
    uint64_t request_seq;
    uint64_t lost_seq; /* the vanished copy's sequence */
} sweep_gone;

struct sweep {
    db_store *db;
    barrier *b;
    jsCtx *js;
    int64_t interval_ms;
    kiln_periodic *timer;
    atomic_bool stopping;
    uint8_t cursor[KEYS_MAX]; /* by_user_state key to resume after; len 0 = from the start */
    size_t cursor_len;
    sweep_track track[SWEEP_TRACK_MAX];
    size_t track_next;
    sweep_gone gone[SWEEP_CHECK_MAX]; /* this round's, re-driven at its end */
    size_t n_gone;
    int64_t last_err_log;
    kiln_metric *m_redriven;
};

int sweep_is_due(const Kiln__V1__JobRecord *rec, int64_t now_ms)
{
    if (rec == NULL || rec->status == NULL || rec->request == NULL || rec->request_seq == 0) return 0;
    if (kiln_jobrec_abandoned(rec, now_ms)) return 1;
    if (rec->status->state != KILN__V1__JOB_STATE__JOB_STATE_PENDING) return 0;
    int64_t due = rec->request->not_before_ms;
    if (rec->retry_at_ms > due) due = rec->retry_at_ms;
    return due <= now_ms;
}

static void sweep_warn(sweep *s, const char *step, const char *id, natsStatus ns, jsErrCode jerr)
{
    int64_t now = kiln_mono_ms();
    if (now - s->last_err_log < SWEEP_ERR_LOG_MS) return;
    s->last_err_log = now;
    LOG_WARN("sweep failed step=%s job=%s status=%s js_err=%d", step, id, natsStatus_GetText(ns),
             (int)jerr);
}

/* KILN_OK when the message is in KILN_JOBS, KILN_ENOTFOUND when it is gone,
 * KILN_ENATS when JetStream did not say. */
static kiln_status sweep_msg_present(sweep *s, const char *id, uint64_t seq)
{
    natsStatus ns = NATS_OK;
    jsErrCode jerr = 0;
    kiln_status st = kiln_js_msg_present(s->js, KILN_STREAM_JOBS, seq, SWEEP_API_WAIT_MS, &ns, &jerr);
    if (st == KILN_ENATS) sweep_warn(s, "get_msg", id, ns, jerr);
    return st;
}

static sweep_track *sweep_track_find(sweep *s, const char *id, uint64_t request_seq)
{
    for (size_t i = 0; i < SWEEP_TRACK_MAX; i++) {
        sweep_track *t = &s->track[i];
        if (t->request_seq == request_seq && strcmp(t->id, id) == 0) return t;
    }
    return NULL;
}

static void sweep_track_put(sweep *s, const char *id, uint64_t request_seq, uint64_t copy_seq)
{
    sweep_track *t = sweep_track_find(s, id, request_seq);
    if (t == NULL) {
        t = &s->track[s->track_next];
        s->track_next = (s->track_next + 1) % SWEEP_TRACK_MAX;
    }
    snprintf(t->id, sizeof t->id, "%s", id);
    t->request_seq = request_seq;
    t->copy_seq = copy_seq;
}

/* Publishes rec's JobRequest again (waits for the JetStream ack). lost_seq is
 * the sequence of the copy that vanished. */
static kiln_status sweep_redrive(sweep *s, const Kiln__V1__JobRecord *rec, uint64_t lost_seq)
{
    const char *id = rec->request->id;
    const char *subject = kiln_priority_subject(rec->request->priority);
    uint8_t *buf = NULL;
    size_t len = 0;
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    char msg_id[KILN_ID_MAX_LEN + 48], orig[24];

    kiln_status st = kiln_pb_pack(&rec->request->base, &buf, &len);
    if (st != KILN_OK) return st;
    snprintf(msg_id, sizeof msg_id, "%s.redrive.%" PRIu64, id, lost_seq);
    snprintf(orig, sizeof orig, "%" PRIu64, rec->request_seq);
    natsStatus ns = natsMsg_Create(&m, subject, NULL, (const char *)buf, (int)len);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, KILN_HDR_REDRIVE, orig);
    if (ns == NATS_OK) ns = jsPubOptions_Init(&po);
    if (ns == NATS_OK) {
        po.MsgId = msg_id;
        po.ExpectStream = KILN_STREAM_JOBS;
        po.MaxWait = SWEEP_API_WAIT_MS;
        ns = js_PublishMsg(&pa, s->js, m, &po, &jerr);
    }
    if (ns != NATS_OK) {
        LOG_WARN("sweep re-drive publish failed job=%s subject=%s status=%s js_err=%d", id, subject,
                 natsStatus_GetText(ns), (int)jerr);
        st = KILN_ENATS;
        goto out;
    }
    /* A duplicate ack carries the sequence of the copy already stored. */
    sweep_track_put(s, id, rec->request_seq, pa->Sequence);
    LOG_WARN("lost job request re-driven job=%s subject=%s request_seq=%" PRIu64
             " lost_seq=%" PRIu64 " new_seq=%" PRIu64 " duplicate=%d",
             id, subject, rec->request_seq, lost_seq, pa->Sequence, (int)pa->Duplicate);
    if (!pa->Duplicate) kiln_metric_add(s->m_redriven, 1);
out:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    free(buf);
    return st;
}

/* Looks at one pending index entry; a due job whose request is gone joins
 * s->gone. *checked is set when the job was overdue (and so cost a stream
 * lookup). */
static void sweep_job(sweep *s, const char *id, bool *checked)
{
    Kiln__V1__JobRecord *rec = NULL;
    *checked = false;
    if (db_load_record(s->db, NULL, NULL, id, &rec) != KILN_OK) return;
    if (!sweep_is_due(rec, kiln_now_ms())) goto out;
    *checked = true;
    uint64_t request_seq = rec->request_seq;

    /* Our last re-drive of it is still queued: nothing lost. */
    uint64_t lost_seq = request_seq;
    sweep_track *t = sweep_track_find(s, id, request_seq);
    if (t != NULL) {
        kiln_status p = sweep_msg_present(s, id, t->copy_seq);
        if (p != KILN_ENOTFOUND) goto out;
        lost_seq = t->copy_seq;
    }
    kiln_status p = sweep_msg_present(s, id, request_seq);
    if (p != KILN_ENOTFOUND || s->n_gone == SWEEP_CHECK_MAX) goto out;
    sweep_gone *g = &s->gone[s->n_gone++];
    snprintf(g->id, sizeof g->id, "%s", id);
    g->request_seq = request_seq;
    g->lost_seq = lost_seq;
out:
    kiln__v1__job_record__free_unpacked(rec, NULL);
}

/* Waits until the apply loop has caught up with KILN_JOBS: as long as it
 * makes progress (a backlog), up to one sweep interval; a wait in which it
 * applied nothing (a stuck durable, which the store's durable check mends)
 * ends the round's wait. */
static kiln_status sweep_wait_applied(sweep *s, kiln_periodic *p)
{
    int64_t until = kiln_mono_ms() + s->interval_ms;
    for (;;) {
        uint64_t before = barrier_applied_seq(s->b);
        kiln_status st = barrier_wait(s->b, BARRIER_MAX_WAIT_MS);
        if (st != KILN_ETIMEOUT || barrier_applied_seq(s->b) == before ||
            kiln_mono_ms() >= until || atomic_load(&s->stopping) || kiln_periodic_stopping(p))
            return st;
    }
}

/* Re-drives the round's gone jobs still due. A job may just have finished:
 * the worker acks (and the stream deletes) its request only after the
 * terminal transition is stored, so once the apply loop has caught up the
 * record tells. One wait for the whole round: with the apply loop stuck, a
 * wait of up to 2 s per job made a round over hundreds of lost requests
 * last minutes. */
static void sweep_redrive_gone(sweep *s, kiln_periodic *p)
{
    size_t n = s->n_gone;
    s->n_gone = 0;
    if (n == 0 || sweep_wait_applied(s, p) != KILN_OK) return;
    for (size_t i = 0; i < n && !atomic_load(&s->stopping) && !kiln_periodic_stopping(p); i++) {
        const sweep_gone *g = &s->gone[i];
        Kiln__V1__JobRecord *rec = NULL;
        if (db_load_record(s->db, NULL, NULL, g->id, &rec) != KILN_OK) continue;
        if (sweep_is_due(rec, kiln_now_ms()) && rec->request_seq == g->request_seq)
            (void)sweep_redrive(s, rec, g->lost_seq);
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
}

/* One pass over the PENDING and PROCESSING ranges of by_user_state, resuming
 * at the cursor.
 * True when it stopped at SWEEP_CHECK_MAX with more to look at. */
static bool sweep_round(sweep *s, kiln_periodic *p)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db->db, ro, s->db->cf[DB_CF_BY_USER_STATE]);
    const uint8_t pending = (uint8_t)KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    const uint8_t processing = (uint8_t)KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    unsigned checked = 0;

    if (s->cursor_len > 0) {
        rocksdb_iter_seek(it, (const char *)s->cursor, s->cursor_len);
        size_t kl = 0;
        if (rocksdb_iter_valid(it)) {
            const char *k = rocksdb_iter_key(it, &kl);
            if (kl == s->cursor_len && memcmp(k, s->cursor, kl) == 0) rocksdb_iter_next(it);
        }
    } else {
        rocksdb_iter_seek_to_first(it);
    }
    while (rocksdb_iter_valid(it) && checked < SWEEP_CHECK_MAX && !atomic_load(&s->stopping) &&
           !kiln_periodic_stopping(p)) {
        size_t kl = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        size_t plen = kl > 0 ? 1 + (size_t)k[0] + 1 : 0; /* [len][user][state] */
        if (kl == 0 || kl > KEYS_MAX || kl < plen) {
            rocksdb_iter_next(it); /* malformed: not ours to judge */
            continue;
        }
        uint8_t state = k[plen - 1];
        if (state != pending && state != processing) {
            /* Jump to this user's PENDING range (PROCESSING follows it), or
             * past the user. */
            uint8_t seek[KEYS_MAX];
            memcpy(seek, k, plen - 1);
            if (state < pending) {
                seek[plen - 1] = pending;
            } else if (state < 0xff) {
                seek[plen - 1] = 0xff;
            } else {
                rocksdb_iter_next(it);
                continue;
            }
            rocksdb_iter_seek(it, (const char *)seek, plen);
            continue;
        }
        char id[KILN_ID_MAX_LEN + 1];
        memcpy(s->cursor, k, kl);
        s->cursor_len = kl;
        if (keys_index_id(k, kl, plen, id, sizeof id) == KILN_OK) {
            bool c = false;
            sweep_job(s, id, &c);
            if (c) checked++;
        }
        rocksdb_iter_next(it);
    }
    char *ierr = NULL;
    rocksdb_iter_get_error(it, &ierr);
    if (ierr != NULL) {
        LOG_WARN("sweep scan failed err=\"%s\"", ierr);
        rocksdb_free(ierr);
    }
    /* Reached the end: the next round starts a new pass. */
    bool more = rocksdb_iter_valid(it) && checked >= SWEEP_CHECK_MAX;
    if (!rocksdb_iter_valid(it) && ierr == NULL) s->cursor_len = 0;
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    sweep_redrive_gone(s, p);
    return more;
}

static void sweep_tick(kiln_periodic *p, void *arg)
{
    sweep *s = arg;
    if (!sweep_round(s, p)) return;
    int64_t soon = s->interval_ms / 10;
    if (soon < SWEEP_MORE_MIN_MS) soon = SWEEP_MORE_MIN_MS;
    if (soon < s->interval_ms) kiln_periodic_next_in(p, soon);
}

kiln_status sweep_start(db_store *db, barrier *b, jsCtx *js, int64_t interval_ms, sweep **out)
{
    *out = NULL;
    if (interval_ms <= 0) {
        LOG_INFO("sweep off");
        return KILN_OK;
    }
    sweep *s = calloc(1, sizeof *s);
    if (s == NULL) return KILN_ENOMEM;
    s->db = db;
    s->b = b;
    s->js = js;
    s->interval_ms = interval_ms;
    s->last_err_log = -SWEEP_ERR_LOG_MS;
    atomic_init(&s->stopping, false);
    s->m_redriven = kiln_metric_counter("kiln_store_sweep_redriven_total",
                                        "lost job requests (pending, or abandoned while processing) published again by the sweep");
    int64_t first_ms = interval_ms < SWEEP_FIRST_MS ? interval_ms : SWEEP_FIRST_MS;
    if (kiln_periodic_start_in("kiln-sweep", first_ms, interval_ms, sweep_tick, s, &s->timer) !=
        KILN_OK) {
        free(s);
        return KILN_ERR;
    }
    LOG_INFO("sweep started interval_ms=%lld", (long long)interval_ms);
    *out = s;
    return KILN_OK;
}

void sweep_stop(sweep *s)
{
    if (s == NULL) return;
    atomic_store(&s->stopping, true);
    kiln_periodic_stop(s->timer);
    free(s);
}
