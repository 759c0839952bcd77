/* ingest.c - the apply loop (thread "kiln-apply"): pull batches from
 * KILN_JOBS (durable kiln-store), apply each in one RocksDB write, publish
 * jobs.done for every terminal state and an event for every change written,
 * and ack the batch once JetStream confirmed those publishes; broadcast
 * kiln.cancelled.<id> for jobs it cancelled.
 *
 * Pipelined one batch deep: batch k+1 is fetched, staged and written while
 * the acks of batch k's publishes travel; then k's publishes are confirmed
 * and k is acked, and only then k+1's outputs are published. So the rules
 * still hold per message: written before jobs.done (a subscriber that
 * queries sees the terminal state), and jobs.done/events confirmed before
 * the message is acked (a crash in between redelivers it; re-applying an
 * identical terminal transition re-publishes jobs.done, and a redelivered
 * message re-announces the change it finds written: jobs.done de-duplicated
 * by Nats-Msg-Id, an event only if it is not its subject's last, events.h;
 * the batch's terminal job ids are written with it, for a start to announce
 * when nats-server lost the batch and no redelivery comes, unannounced.h).
 * Outputs keep stream order because batch k+1 publishes only
 * after batch k's were confirmed. One thread does every fetch, ack and
 * message destroy (common/pull.c is single-threaded per kiln_pull).
 *
 * Latency: libnats' flusher waits 1 ms before writing a buffered connection.
 * Fetch requests therefore go on a SendAsap connection, and when a batch is
 * partial (nothing else waiting: the latency-bound case) its publishes are
 * flushed at once; full batches (a backlog) leave the flushing to libnats.
 * Acks are "+ACK" publishes to the message's reply subject (kiln_msg_ack,
 * common/pull.c) on the buffered connection, so a batch's acks cost one
 * write, not one each. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "apply.h"
#include "clock.h"
#include "done.h"
#include "idem.h"
#include "ingest.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pull.h"
#include "reap.h"
#include "subjects.h"
#include "unannounced.h"

/* A fetch asks for 1024 messages; with late deliveries of an earlier request
 * a batch can hold up to about twice that: at most ~4096 publishes (jobs.done
 * + event each), well below the apply connection's max pending (main.c). */
#define INGEST_BATCH 1024
#define INGEST_FETCH_MS 250       /* long poll; short so shutdown and the barrier's idle check react quickly */
#define INGEST_DONE_ACK_MS 10000  /* wait for jobs.done acks */
#define INGEST_RETRY_DELAY_MS 1000 /* nak delay when a batch could not be completed */
/* A batch whose jobs.done/events were refused (e.g. JetStream shutting down
 * for a restart) publishes them again, after these pauses, before it falls
 * back to a nak: a lost nak would leave its announcements to the store's
 * AckWait (30 s). */
#define INGEST_REPUBLISH_PAUSE_MS 250
#define INGEST_REPUBLISH_TRIES 6 /* 250 ms .. 4 s apart: 11.75 s of pauses */
#define INGEST_ERROR_SLEEP_MS 500
#define INGEST_FLUSH_MS 1000      /* PING/PONG of the explicit flush after a partial batch */
#define INGEST_IDEM_SWEEP_MIN_MS (10 * 60 * 1000) /* idem compaction at most this often */
/* Gathering: after a partial batch of at least INGEST_GATHER_MIN messages
 * (a heavy stream; not a backlog, which fills batches, and not a light
 * load's catch-up after a hiccup, which a pause would only lengthen) the
 * loop pauses INGEST_GATHER_US before its next fetch, so more messages
 * share its request, RocksDB write and publishes (docs/design.md). */
#define INGEST_GATHER_MIN 32
#define INGEST_GATHER_US 1000

struct ingest {
    db_store *db;
    natsConnection *nc;
    jsCtx *js;
    barrier *b;
    kiln_pull *pull;
    db_batch *wb;
    apply_sink sink[2];      /* [cur] for the batch being staged, [cur ^ 1] in flight */
    int cur;
    natsMsgList inflight;    /* written and published, awaiting publish acks */
    reap *spent;             /* settled messages, destroyed in bursts */
    int has_inflight;
    uint64_t inflight_failed0; /* done_failures() before its publishes */
    int64_t inflight_t0;
    uint64_t inflight_seq;
    int64_t next_sweep_ms; /* monotonic */
    bool gather;           /* pause INGEST_GATHER_US before the next fetch */
    unannounced ua;        /* slot = sink index of the batch */
    pthread_t thread;
    int thread_started;
    atomic_bool stop;
    kiln_metric *m_batches, *m_gathers, *m_msgs, *m_changes, *m_done, *m_events, *m_invalid, *m_retries,
        *m_seq;
};

static void ingest_sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void ingest_sleep_ms(int64_t ms) { ingest_sleep_us(ms * 1000); }

/* One JobTransition; an undecodable one is counted and skipped. */
static kiln_status ingest_transition(ingest *ing, const void *data, size_t len, uint64_t seq,
                                     apply_sink *sink, int *changed)
{
    kiln_status st = apply_transition(ing->db, ing->wb, data, len, sink, changed);
    if (st == KILN_EINVAL) {
        LOG_WARN("transition undecodable, skipped seq=%llu bytes=%zu", (unsigned long long)seq,
                 len);
        kiln_metric_add(ing->m_invalid, 1);
        st = KILN_OK;
    }
    return st;
}

/* A consumer's TransitionBatch: each transition applied in order, as if it
 * had come alone (consumer/publish.c). */
static kiln_status ingest_transition_batch(ingest *ing, const void *data, size_t len,
                                           uint64_t seq, apply_sink *sink, int *changed)
{
    Kiln__V1__TransitionBatch *tb = kiln__v1__transition_batch__unpack(NULL, len, data);
    if (tb == NULL) {
        LOG_WARN("transition batch undecodable, skipped seq=%llu bytes=%zu",
                 (unsigned long long)seq, len);
        kiln_metric_add(ing->m_invalid, 1);
        return KILN_OK;
    }
    kiln_status st = KILN_OK;
    for (size_t i = 0; i < tb->n_transitions && st == KILN_OK; i++) {
        int one = 0;
        st = ingest_transition(ing, tb->transitions[i].data, tb->transitions[i].len, seq, sink,
                               &one);
        *changed += one;
    }
    kiln__v1__transition_batch__free_unpacked(tb, NULL);
    return st;
}

static int ingest_is_lane(const char *subj)
{
    return strcmp(subj, KILN_SUBJ_GENERATE) == 0 || strcmp(subj, KILN_SUBJ_GENERATE_HIGH) == 0 ||
           strcmp(subj, KILN_SUBJ_GENERATE_LOW) == 0;
}

/* Applies one message into the batch. KILN_EIO (or ENOMEM) aborts the batch. */
static kiln_status ingest_apply_msg(ingest *ing, apply_sink *sink, natsMsg *msg, uint64_t *seq)
{
    jsMsgMetaData *meta = NULL;
    int64_t ts_ms = kiln_now_ms();
    int changed = 0;
    kiln_status st = KILN_OK;
    const char *subj = natsMsg_GetSubject(msg);
    const void *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);

    sink->replay = 0;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        *seq = meta->Sequence.Stream;
        if (meta->Timestamp > 0) ts_ms = meta->Timestamp / 1000000;
        sink->replay = meta->NumDelivered > 1;
        jsMsgMetaData_Destroy(meta);
    }
    if (data == NULL) data = "";
    const char *batch = NULL;
    if (strcmp(subj, KILN_SUBJ_TRANSITION) == 0 &&
        natsMsgHeader_Get(msg, KILN_HDR_TX_BATCH, &batch) == NATS_OK) {
        st = ingest_transition_batch(ing, data, (size_t)len, *seq, sink, &changed);
    } else if (strcmp(subj, KILN_SUBJ_TRANSITION) == 0) {
        st = ingest_transition(ing, data, (size_t)len, *seq, sink, &changed);
    } else if (ingest_is_lane(subj)) {
        st = apply_job_request(ing->db, ing->wb, subj, data, (size_t)len, ts_ms, *seq, sink,
                               &changed);
        if (st == KILN_EINVAL) {
            /* The consumer dead-letters it; the store only skips it. */
            LOG_DEBUG("job request invalid, skipped seq=%llu", (unsigned long long)*seq);
            kiln_metric_add(ing->m_invalid, 1);
            st = KILN_OK;
        }
    }
    if (changed > 0) kiln_metric_add(ing->m_changes, changed); /* a batch: one per transition */
    return st;
}

static void ingest_settle(ingest *ing, natsMsgList *list, int ack)
{
    for (int i = 0; i < list->Count; i++) {
        kiln_status s = kiln_msg_ack(ing->nc, list->Msgs[i], ack ? KILN_ACK : KILN_ACK_NAK,
                                     ack ? 0 : INGEST_RETRY_DELAY_MS);
        if (s != KILN_OK) {
            /* Redelivered after AckWait; applying again changes nothing. */
            LOG_WARN("%s failed status=%s", ack ? "ack" : "nak", kiln_status_str(s));
            return;
        }
    }
}

/* ---- pipeline --------------------------------------------------------------- */

/* Confirms the in-flight batch's publishes, broadcasts its cancels and acks
 * it (or naks it when a publish was not confirmed: the states are written,
 * and the redelivery re-publishes their jobs.done and events). */
static void ingest_settle_inflight(ingest *ing)
{
    if (!ing->has_inflight) return;
    apply_sink *sk = &ing->sink[ing->cur ^ 1];
    kiln_status st = KILN_OK;
    if (sk->done.n > 0 || sk->events.n > 0)
        st = done_wait(ing->js, ing->inflight_failed0, INGEST_DONE_ACK_MS, &ing->stop);
    /* Only what failed goes again (events carry no Nats-Msg-Id: what did
     * arrive must not repeat); what is still unconfirmed is waited for.
     * Stopping, once: the batch is nak'd after, and if nats-server lost its
     * messages no redelivery would announce what is written (chaos run 903:
     * the store was stopped 0.6 s after a reconnect, its jobs.done went
     * nowhere). */
    for (int tries = 0; st != KILN_OK && tries < INGEST_REPUBLISH_TRIES &&
                        (tries == 0 || !atomic_load(&ing->stop));
         tries++) {
        ingest_sleep_ms((int64_t)INGEST_REPUBLISH_PAUSE_MS << (tries < 4 ? tries : 4));
        uint64_t failed0 = done_failures();
        size_t again = done_republish_refused(ing->js);
        st = done_wait(ing->js, failed0, INGEST_DONE_ACK_MS, &ing->stop);
        LOG_INFO("jobs.done/events published again try=%d msgs=%zu status=%s", tries + 1, again,
                 kiln_status_str(st));
    }
    (void)done_republish_refused(NULL); /* confirmed, or the batch is nak'd below */
    unannounced_settled(&ing->ua, ing->cur ^ 1, st == KILN_OK);
    /* Then a consumer running a job cancelled here aborts it. Sent whatever
     * jobs.done did: the cancel is written, and waiting for a redelivery
     * would hold the provider call up. Best effort: the consumer's batch
     * check and the terminal record stop the job anyway. */
    for (size_t i = 0; i < sk->done.n; i++) {
        const apply_done *d = &sk->done.items[i];
        if (d->state == KILN__V1__JOB_STATE__JOB_STATE_CANCELLED) {
            (void)done_broadcast_cancelled(ing->nc, d->id);
            LOG_INFO("job cancelled job=%s", d->id);
        }
    }
    if (st != KILN_OK) {
        LOG_WARN("jobs.done/events not confirmed, batch will be redelivered msgs=%d done=%zu "
                 "events=%zu",
                 ing->inflight.Count, sk->done.n, sk->events.n);
        kiln_metric_add(ing->m_retries, 1);
        ingest_settle(ing, &ing->inflight, 0);
    } else {
        ingest_settle(ing, &ing->inflight, 1);
        kiln_metric_add(ing->m_batches, 1);
        kiln_metric_add(ing->m_msgs, ing->inflight.Count);
        kiln_metric_add(ing->m_done, (int64_t)sk->done.n);
        kiln_metric_add(ing->m_events, (int64_t)sk->events.n);
        LOG_DEBUG("batch acked msgs=%d done=%zu events=%zu seq=%llu us=%lld",
                  ing->inflight.Count, sk->done.n, sk->events.n,
                  (unsigned long long)ing->inflight_seq,
                  (long long)(kiln_mono_us() - ing->inflight_t0));
    }
    apply_sink_reset(sk);
    reap_take(ing->spent, &ing->inflight);
    ing->has_inflight = 0;
}

/* Stages and writes list, settles the previous batch, then publishes this
 * batch's outputs and keeps it in flight. Takes ownership of list (leaves
 * it empty). */
static void ingest_batch(ingest *ing, natsMsgList *list)
{
    kiln_status st = KILN_OK;
    uint64_t max_seq = 0;
    int64_t t0 = kiln_mono_us();
    apply_sink *sk = &ing->sink[ing->cur];

    apply_sink_reset(sk);
    db_batch_clear(ing->wb);
    db_lock(ing->db);
    for (int i = 0; i < list->Count && st == KILN_OK; i++) {
        uint64_t seq = 0;
        st = ingest_apply_msg(ing, sk, list->Msgs[i], &seq);
        if (seq > max_seq) max_seq = seq;
    }
    if (st == KILN_OK) st = apply_sink_flush_counters(ing->db, ing->wb, sk);
    if (st == KILN_OK && max_seq > 0) {
        uint64_t prev = 0;
        st = db_get_u64(ing->db, ing->wb, DB_CF_META, DB_META_APPLIED_SEQ,
                        strlen(DB_META_APPLIED_SEQ), &prev);
        if (st == KILN_OK && max_seq > prev)
            db_put_u64(ing->db, ing->wb, DB_CF_META, DB_META_APPLIED_SEQ,
                       strlen(DB_META_APPLIED_SEQ), max_seq);
    }
    if (st == KILN_OK) unannounced_stage(&ing->ua, ing->wb, ing->cur, &sk->done);
    int64_t t_staged = kiln_mono_us();
    if (st == KILN_OK) st = db_write(ing->db, ing->wb);
    db_unlock(ing->db);
    int64_t t_written = kiln_mono_us();
    if (st != KILN_OK) {
        LOG_ERROR("batch not applied, will retry msgs=%d status=%s", list->Count,
                  kiln_status_str(st));
        kiln_metric_add(ing->m_retries, 1);
        ingest_settle(ing, list, 0);
        natsMsgList_Destroy(list);
        memset(list, 0, sizeof *list);
        apply_sink_reset(sk);
        ingest_settle_inflight(ing);
        ingest_sleep_ms(INGEST_ERROR_SLEEP_MS);
        return;
    }
    barrier_applied(ing->b, max_seq);
    kiln_metric_set(ing->m_seq, (int64_t)max_seq);

    /* The previous batch's acks had the time of this batch's fetch and write. */
    ingest_settle_inflight(ing);
    int64_t t_settled = kiln_mono_us();

    uint64_t failed0 = done_failures();
    st = done_publish_async(ing->js, &sk->done, &sk->events);
    if (st != KILN_OK) {
        /* Let whatever did go out finish, so the next batch waits for its own only. */
        (void)done_wait(ing->js, failed0, INGEST_DONE_ACK_MS, &ing->stop);
        (void)done_republish_refused(NULL); /* the redelivery announces them */
        LOG_WARN("jobs.done/events publish failed, batch will be redelivered msgs=%d",
                 list->Count);
        kiln_metric_add(ing->m_retries, 1);
        ingest_settle(ing, list, 0);
        natsMsgList_Destroy(list);
        memset(list, 0, sizeof *list);
        apply_sink_reset(sk);
        /* The next batch takes the other sink, and so the other unannounced
         * slot: this batch's stays (unconfirmed) until the batch after. */
        ing->cur ^= 1;
        return;
    }
    if (list->Count < INGEST_BATCH && (sk->done.n > 0 || sk->events.n > 0)) {
        /* Partial batch: subscribers wait on these; write them now (the
         * PING round trip this costs overlaps the wait for their acks). */
        natsStatus fs = natsConnection_FlushTimeout(ing->nc, INGEST_FLUSH_MS);
        if (fs != NATS_OK) LOG_DEBUG("flush failed status=%s", natsStatus_GetText(fs));
    }
    ing->inflight = *list;
    memset(list, 0, sizeof *list);
    ing->has_inflight = 1;
    ing->inflight_failed0 = failed0;
    ing->inflight_t0 = t0;
    ing->inflight_seq = max_seq;
    ing->cur ^= 1;
    LOG_DEBUG("batch written msgs=%d seq=%llu stage_us=%lld write_us=%lld settle_prev_us=%lld "
              "publish_us=%lld",
              ing->inflight.Count, (unsigned long long)max_seq, (long long)(t_staged - t0),
              (long long)(t_written - t_staged), (long long)(t_settled - t_written),
              (long long)(kiln_mono_us() - t_settled));
}

/* One fetch (common/pull.c): a no_wait request with an expiry makes the
 * server answer as soon as anything is there (up to a full batch) and wait
 * up to the expiry only when nothing is. Late deliveries of an earlier
 * request come first and may make the batch larger than INGEST_BATCH. */
static kiln_status ingest_fetch(ingest *ing, natsMsgList *list)
{
    return kiln_pull_fetch(ing->pull, INGEST_BATCH, INGEST_FETCH_MS, list);
}

/* Removes the unannounced slots of confirmed batches (an idle or stopping
 * loop: a restart then announces nothing again). */
static void ingest_clear_unannounced(ingest *ing)
{
    kiln_status st = unannounced_clear_confirmed(&ing->ua, ing->db, ing->wb);
    if (st != KILN_OK) LOG_WARN("unannounced slots not cleared status=%s", kiln_status_str(st));
}

/* At start, before the first batch overwrites a slot: announces again the
 * jobs the last run wrote terminal and may not have announced
 * (unannounced.h), until JetStream confirmed them or the store stops. */
static void ingest_reannounce(ingest *ing)
{
    apply_sink *sk = &ing->sink[0];
    size_t n = 0;
    kiln_status st = unannounced_load(&ing->ua, ing->db, sk, &n);
    while (st == KILN_OK && sk->done.n > 0 && !atomic_load(&ing->stop)) {
        uint64_t failed0 = done_failures();
        st = done_publish_async(ing->js, &sk->done, &sk->events);
        if (st == KILN_OK) st = done_wait(ing->js, failed0, INGEST_DONE_ACK_MS, &ing->stop);
        (void)done_republish_refused(NULL); /* the whole list goes again */
        LOG_INFO("jobs.done of the last run published again jobs=%zu done=%zu status=%s", n,
                 sk->done.n, kiln_status_str(st));
        if (st == KILN_OK) break;
        st = KILN_OK;
        ingest_sleep_ms(INGEST_ERROR_SLEEP_MS);
    }
    if (st != KILN_OK) LOG_WARN("unannounced jobs not readable status=%s", kiln_status_str(st));
    bool done = st == KILN_OK && !atomic_load(&ing->stop);
    for (int i = 0; i < UNANNOUNCED_SLOTS; i++) unannounced_settled(&ing->ua, i, done);
    if (done) ingest_clear_unannounced(ing);
    apply_sink_reset(sk);
}

static void *ingest_main(void *arg)
{
    ingest *ing = arg;
    int64_t last_err_log = 0;
    ingest_reannounce(ing);
    while (!atomic_load(&ing->stop)) {
        natsMsgList list = {0};
        if (kiln_mono_ms() >= ing->next_sweep_ms) {
            /* Expired Idempotency-Keys: the idem CF's compaction filter
             * drops them when RocksDB rewrites the files. */
            idem_suggest_sweep(ing->db);
            int64_t every = ing->db->idem_ttl_ms / 8;
            ing->next_sweep_ms = kiln_mono_ms() + (every > INGEST_IDEM_SWEEP_MIN_MS ? every : INGEST_IDEM_SWEEP_MIN_MS);
        }
        /* The batch in flight's publish acks travel during the pause. */
        if (ing->gather) {
            kiln_metric_add(ing->m_gathers, 1);
            ingest_sleep_us(INGEST_GATHER_US);
        }
        /* A partial batch last time means the stream was drained: the next
         * fetch may wait up to its expiry, so finish the batch in flight
         * first. Full batches (a backlog) keep the pipeline going. */
        if (ing->has_inflight && ing->inflight.Count < INGEST_BATCH) ingest_settle_inflight(ing);
        uint64_t epoch = barrier_fetch_begin(ing->b);
        kiln_status s = ingest_fetch(ing, &list);
        ing->gather = s == KILN_OK && list.Count >= INGEST_GATHER_MIN && list.Count < INGEST_BATCH;
        if (s == KILN_OK && list.Count == 0) {
            natsMsgList_Destroy(&list);
            /* Every batch fetched before is written (this thread wrote it). */
            barrier_fetch_idle(ing->b, epoch);
            /* Nothing more: finish the batch in flight rather than hold its acks. */
            ingest_settle_inflight(ing);
            ingest_clear_unannounced(ing);
            continue;
        }
        if (s != KILN_OK) {
            natsMsgList_Destroy(&list);
            ingest_settle_inflight(ing);
            if (kiln_mono_ms() - last_err_log > 5000) {
                LOG_WARN("fetch failed status=%s err=\"%s\"", kiln_status_str(s),
                         nats_GetLastError(NULL));
                last_err_log = kiln_mono_ms();
            }
            ingest_sleep_ms(INGEST_ERROR_SLEEP_MS);
            continue;
        }
        ingest_batch(ing, &list);
        natsMsgList_Destroy(&list); /* empty when it went in flight */
    }
    ingest_settle_inflight(ing);
    ingest_clear_unannounced(ing);
    return NULL;
}

static void ingest_free(ingest *ing)
{
    if (ing == NULL) return;
    reap_destroy(ing->spent);
    kiln_pull_close(ing->pull); /* the durable stays */
    db_batch_destroy(ing->wb);
    apply_sink_free(&ing->sink[0]);
    apply_sink_free(&ing->sink[1]);
    free(ing);
}

kiln_status ingest_start(db_store *db, natsConnection *pull_nc, natsConnection *nc, jsCtx *js,
                         barrier *b, ingest **out)
{
    kiln_status st = KILN_OK;
    ingest *ing = calloc(1, sizeof *ing);
    if (ing == NULL) return KILN_ENOMEM;
    ing->db = db;
    ing->nc = nc;
    ing->js = js;
    ing->next_sweep_ms = kiln_mono_ms() + INGEST_IDEM_SWEEP_MIN_MS;
    ing->b = b;
    atomic_init(&ing->stop, false);
    ing->m_batches = kiln_metric_counter("kiln_store_batches_total", "Fetched batches applied and acked");
    ing->m_gathers = kiln_metric_counter("kiln_store_gather_pauses_total",
                                         "Pauses before a fetch to gather a fuller batch (heavy load only)");
    ing->m_msgs = kiln_metric_counter("kiln_store_messages_total", "KILN_JOBS messages applied and acked");
    ing->m_changes = kiln_metric_counter("kiln_store_transitions_applied_total",
                                         "Job requests and transitions that changed a record");
    ing->m_done = kiln_metric_counter("kiln_store_done_published_total", "jobs.done events published by the apply loop");
    ing->m_events = kiln_metric_counter("kiln_store_events_published_total",
                                        "Record changes published on kiln.events.*");
    ing->m_invalid = kiln_metric_counter("kiln_store_invalid_messages_total", "Undecodable or invalid messages skipped");
    ing->m_retries = kiln_metric_counter("kiln_store_batch_retries_total", "Batches nak'd for redelivery");
    ing->m_seq = kiln_metric_gauge("kiln_store_applied_seq", "Highest KILN_JOBS sequence applied");

    ing->sink[0].defer_counters = 1;
    ing->sink[1].defer_counters = 1;
    st = db_batch_create(&ing->wb);
    if (st == KILN_OK) st = reap_create(&ing->spent);
    if (st != KILN_OK) goto out;
    st = kiln_pull_open(pull_nc, KILN_STREAM_JOBS, KILN_DURABLE_STORE, &ing->pull);
    if (st != KILN_OK) goto out;
    if (pthread_create(&ing->thread, NULL, ingest_main, ing) != 0) {
        st = KILN_ERR;
        goto out;
    }
    pthread_setname_np(ing->thread, "kiln-apply");
    ing->thread_started = 1;
    LOG_INFO("apply loop started durable=%s batch=%d", KILN_DURABLE_STORE, INGEST_BATCH);
    *out = ing;
    ing = NULL;
out:
    ingest_free(ing);
    return st;
}

void ingest_stop_soon(ingest *ing)
{
    if (ing != NULL) atomic_store(&ing->stop, true);
}

void ingest_stop(ingest *ing)
{
    if (ing == NULL) return;
    atomic_store(&ing->stop, true);
    if (ing->thread_started) pthread_join(ing->thread, NULL);
    LOG_INFO("apply loop stopped");
    ingest_free(ing);
}
