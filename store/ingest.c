/* ingest.c - the apply thread: pull a batch from KILN_JOBS (durable
 * kiln-store), apply it in one RocksDB write, publish jobs.done for every
 * terminal state and an event for every change written, wait for those
 * acks, broadcast kiln.cancelled.<id> for jobs it cancelled, then ack the
 * batch.
 *
 * Only this thread touches sub, wb and sink. Order per batch matters:
 * write before jobs.done (a subscriber that queries sees the terminal
 * state), jobs.done and events acked before the batch is acked (a crash in
 * between redelivers the batch; re-applying an identical terminal
 * transition re-publishes jobs.done, and a redelivered message re-announces
 * the change it finds written, de-duplicated by Nats-Msg-Id). */
#include <stdatomic.h>
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
#include "subjects.h"

#define INGEST_BATCH 256
#define INGEST_FETCH_MS 250       /* long poll; short so shutdown and the barrier's idle check react quickly */
#define INGEST_DONE_ACK_MS 10000  /* wait for jobs.done acks */
#define INGEST_RETRY_DELAY_MS 1000 /* nak delay when a batch could not be completed */
#define INGEST_ERROR_SLEEP_MS 500
#define INGEST_IDEM_SWEEP_MIN_MS (10 * 60 * 1000) /* idem compaction at most this often */

struct ingest {
    db_store *db;
    natsConnection *nc;
    jsCtx *js;
    barrier *b;
    natsSubscription *sub;
    rocksdb_writebatch_wi_t *wb;
    apply_sink sink;
    int64_t next_sweep_ms; /* monotonic */
    pthread_t thread;
    int thread_started;
    atomic_bool stop;
    kiln_metric *m_batches, *m_msgs, *m_changes, *m_done, *m_events, *m_invalid, *m_retries,
        *m_seq;
};

static void ingest_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int ingest_is_lane(const char *subj)
{
    return strcmp(subj, KILN_SUBJ_GENERATE) == 0 || strcmp(subj, KILN_SUBJ_GENERATE_HIGH) == 0 ||
           strcmp(subj, KILN_SUBJ_GENERATE_LOW) == 0;
}

/* Applies one message into the batch. KILN_EIO (or ENOMEM) aborts the batch. */
static kiln_status ingest_apply_msg(ingest *ing, natsMsg *msg, uint64_t *seq)
{
    jsMsgMetaData *meta = NULL;
    int64_t ts_ms = kiln_now_ms();
    int changed = 0;
    kiln_status st = KILN_OK;
    const char *subj = natsMsg_GetSubject(msg);
    const void *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);

    ing->sink.replay = 0;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        *seq = meta->Sequence.Stream;
        if (meta->Timestamp > 0) ts_ms = meta->Timestamp / 1000000;
        ing->sink.replay = meta->NumDelivered > 1;
        jsMsgMetaData_Destroy(meta);
    }
    if (data == NULL) data = "";
    if (strcmp(subj, KILN_SUBJ_TRANSITION) == 0) {
        st = apply_transition(ing->db, ing->wb, data, (size_t)len, &ing->sink, &changed);
        if (st == KILN_EINVAL) {
            LOG_WARN("transition undecodable, skipped seq=%llu bytes=%d",
                     (unsigned long long)*seq, len);
            kiln_metric_add(ing->m_invalid, 1);
            st = KILN_OK;
        }
    } else if (ingest_is_lane(subj)) {
        st = apply_job_request(ing->db, ing->wb, data, (size_t)len, ts_ms, *seq, &ing->sink,
                               &changed);
        if (st == KILN_EINVAL) {
            /* The consumer dead-letters it; the store only skips it. */
            LOG_DEBUG("job request invalid, skipped seq=%llu", (unsigned long long)*seq);
            kiln_metric_add(ing->m_invalid, 1);
            st = KILN_OK;
        }
    }
    if (changed) kiln_metric_add(ing->m_changes, 1);
    return st;
}

static void ingest_settle(natsMsgList *list, int ack)
{
    for (int i = 0; i < list->Count; i++) {
        natsStatus s = ack ? natsMsg_Ack(list->Msgs[i], NULL)
                           : natsMsg_NakWithDelay(list->Msgs[i], INGEST_RETRY_DELAY_MS, NULL);
        if (s != NATS_OK) {
            /* Redelivered after AckWait; applying again changes nothing. */
            LOG_WARN("%s failed status=%s", ack ? "ack" : "nak", natsStatus_GetText(s));
            return;
        }
    }
}

static void ingest_batch(ingest *ing, natsMsgList *list)
{
    kiln_status st = KILN_OK;
    uint64_t max_seq = 0;
    int64_t t0 = kiln_mono_us();

    apply_sink_reset(&ing->sink);
    rocksdb_writebatch_wi_clear(ing->wb);
    db_lock(ing->db);
    for (int i = 0; i < list->Count && st == KILN_OK; i++) {
        uint64_t seq = 0;
        st = ingest_apply_msg(ing, list->Msgs[i], &seq);
        if (seq > max_seq) max_seq = seq;
    }
    if (st == KILN_OK && max_seq > 0) {
        uint64_t prev = 0;
        st = db_get_u64(ing->db, ing->wb, DB_CF_META, DB_META_APPLIED_SEQ,
                        strlen(DB_META_APPLIED_SEQ), &prev);
        if (st == KILN_OK && max_seq > prev)
            db_put_u64(ing->db, ing->wb, DB_CF_META, DB_META_APPLIED_SEQ,
                       strlen(DB_META_APPLIED_SEQ), max_seq);
    }
    if (st == KILN_OK) st = db_write(ing->db, ing->wb);
    db_unlock(ing->db);
    if (st != KILN_OK) {
        LOG_ERROR("batch not applied, will retry msgs=%d status=%s", list->Count,
                  kiln_status_str(st));
        kiln_metric_add(ing->m_retries, 1);
        ingest_settle(list, 0);
        ingest_sleep_ms(INGEST_ERROR_SLEEP_MS);
        return;
    }
    barrier_applied(ing->b, max_seq);
    kiln_metric_set(ing->m_seq, (int64_t)max_seq);

    st = done_publish_batch(ing->js, &ing->sink.done, &ing->sink.events, INGEST_DONE_ACK_MS);
    /* Then a consumer running a job cancelled here aborts it. Sent whatever
     * jobs.done did: the cancel is written, and waiting for a redelivery
     * would hold the provider call up. Best effort: the consumer's batch
     * check and the terminal record stop the job anyway. */
    for (size_t i = 0; i < ing->sink.done.n; i++) {
        const apply_done *d = &ing->sink.done.items[i];
        if (d->state == KILN__V1__JOB_STATE__JOB_STATE_CANCELLED) {
            (void)done_broadcast_cancelled(ing->nc, d->id);
            LOG_INFO("job cancelled job=%s", d->id);
        }
    }
    if (st != KILN_OK) {
        /* The states are written; redelivery re-publishes their jobs.done
         * and events. */
        LOG_WARN("jobs.done/events not confirmed, batch will be redelivered msgs=%d done=%zu "
                 "events=%zu",
                 list->Count, ing->sink.done.n, ing->sink.events.n);
        kiln_metric_add(ing->m_retries, 1);
        ingest_settle(list, 0);
        return;
    }
    ingest_settle(list, 1);
    kiln_metric_add(ing->m_batches, 1);
    kiln_metric_add(ing->m_msgs, list->Count);
    kiln_metric_add(ing->m_done, (int64_t)ing->sink.done.n);
    kiln_metric_add(ing->m_events, (int64_t)ing->sink.events.n);
    LOG_DEBUG("batch applied msgs=%d done=%zu events=%zu seq=%llu us=%lld", list->Count,
              ing->sink.done.n, ing->sink.events.n, (unsigned long long)max_seq,
              (long long)(kiln_mono_us() - t0));
}

/* One fetch. nats.c's simple Fetch keeps a long poll open until the whole
 * batch is there or it expires, which would hold a lone job back for the
 * full expiry. A no_wait request with an expiry instead makes the server
 * (2.9) answer as soon as anything is there (up to a full batch) and wait
 * up to the expiry only when nothing is. */
static natsStatus ingest_fetch(ingest *ing, natsMsgList *list)
{
    jsFetchRequest fr;
    jsFetchRequest_Init(&fr);
    fr.Batch = INGEST_BATCH;
    fr.NoWait = true;
    fr.Expires = (int64_t)INGEST_FETCH_MS * 1000000;
    return natsSubscription_FetchRequest(list, ing->sub, &fr);
}

static void *ingest_main(void *arg)
{
    ingest *ing = arg;
    int64_t last_err_log = 0;
    while (!atomic_load(&ing->stop)) {
        natsMsgList list = {0};
        if (kiln_mono_ms() >= ing->next_sweep_ms) {
            /* Expired Idempotency-Keys: the idem CF's compaction filter
             * drops them when RocksDB rewrites the files. */
            idem_suggest_sweep(ing->db);
            int64_t every = ing->db->idem_ttl_ms / 8;
            ing->next_sweep_ms = kiln_mono_ms() + (every > INGEST_IDEM_SWEEP_MIN_MS ? every : INGEST_IDEM_SWEEP_MIN_MS);
        }
        uint64_t epoch = barrier_fetch_begin(ing->b);
        natsStatus s = ingest_fetch(ing, &list);
        if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND || (s == NATS_OK && list.Count == 0)) {
            natsMsgList_Destroy(&list);
            barrier_fetch_idle(ing->b, epoch);
            continue;
        }
        if (s != NATS_OK) {
            natsMsgList_Destroy(&list);
            if (kiln_mono_ms() - last_err_log > 5000) {
                LOG_WARN("fetch failed status=%s err=\"%s\"", natsStatus_GetText(s),
                         nats_GetLastError(NULL));
                last_err_log = kiln_mono_ms();
            }
            ingest_sleep_ms(INGEST_ERROR_SLEEP_MS);
            continue;
        }
        ingest_batch(ing, &list);
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

static void ingest_free(ingest *ing)
{
    if (ing == NULL) return;
    if (ing->sub != NULL) {
        /* Keep the durable: only drop our interest in it. */
        natsSubscription_Destroy(ing->sub);
    }
    if (ing->wb != NULL) rocksdb_writebatch_wi_destroy(ing->wb);
    apply_sink_free(&ing->sink);
    free(ing);
}

kiln_status ingest_start(db_store *db, natsConnection *nc, jsCtx *js, barrier *b, ingest **out)
{
    kiln_status st = KILN_OK;
    jsSubOptions so;
    jsErrCode jerr = 0;
    ingest *ing = calloc(1, sizeof *ing);
    if (ing == NULL) return KILN_ENOMEM;
    ing->db = db;
    ing->nc = nc;
    ing->js = js;
    ing->next_sweep_ms = kiln_mono_ms() + INGEST_IDEM_SWEEP_MIN_MS;
    ing->b = b;
    atomic_init(&ing->stop, false);
    ing->m_batches = kiln_metric_counter("kiln_store_batches_total", "Fetched batches applied and acked");
    ing->m_msgs = kiln_metric_counter("kiln_store_messages_total", "KILN_JOBS messages applied and acked");
    ing->m_changes = kiln_metric_counter("kiln_store_transitions_applied_total",
                                         "Job requests and transitions that changed a record");
    ing->m_done = kiln_metric_counter("kiln_store_done_published_total", "jobs.done events published by the apply loop");
    ing->m_events = kiln_metric_counter("kiln_store_events_published_total",
                                        "Record changes published on kiln.events.*");
    ing->m_invalid = kiln_metric_counter("kiln_store_invalid_messages_total", "Undecodable or invalid messages skipped");
    ing->m_retries = kiln_metric_counter("kiln_store_batch_retries_total", "Batches nak'd for redelivery");
    ing->m_seq = kiln_metric_gauge("kiln_store_applied_seq", "Highest KILN_JOBS sequence applied");

    ing->wb = rocksdb_writebatch_wi_create(0, 1);
    if (ing->wb == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    jsSubOptions_Init(&so);
    so.Stream = KILN_STREAM_JOBS;
    so.Consumer = KILN_DURABLE_STORE;
    so.ManualAck = true;
    natsStatus s = js_PullSubscribe(&ing->sub, js, "", KILN_DURABLE_STORE, NULL, &so, &jerr);
    if (s != NATS_OK) {
        ing->sub = NULL;
        LOG_ERROR("pull subscribe failed durable=%s status=%s jerr=%d err=\"%s\"",
                  KILN_DURABLE_STORE, natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
        st = kiln_nats_status(s);
        goto out;
    }
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

void ingest_stop(ingest *ing)
{
    if (ing == NULL) return;
    atomic_store(&ing->stop, true);
    if (ing->thread_started) pthread_join(ing->thread, NULL);
    LOG_INFO("apply loop stopped");
    ingest_free(ing);
}
