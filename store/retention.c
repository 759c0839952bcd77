/* retention.c - removes finished jobs' records after KILN_RESULT_TTL.
 *
 * Every terminal record has an entry in CF finished, [be64 ended][id]
 * (apply.c writes it when the job ends; ended = apply_finished_at()), so a
 * pass reads only what is due, oldest first, whatever the size of the store.
 * A pass holds db_lock() for at most RETENTION_PASS_MAX entries, then lets
 * the apply loop in before the next one. */
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "clock.h"
#include "jobreq.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "pb.h"
#include "periodic.h"
#include "retention.h"

#define RETENTION_PASS_MAX 128 /* ~2-3 ms under db_lock per pass */
#define RETENTION_INDEX_CHUNK 1024
/* The key's own clock starts when the store reserves it, a little after
 * the job's created_at: the record outlives it by this much. */
#define RETENTION_IDEM_MARGIN_MS (60 * 1000)

struct retention {
    db_store *db;
    int64_t ttl_ms;
    int indexed; /* retention_index_all done */
    kiln_periodic *timer;
    kiln_metric *m_removed;
};

/* When rec may go: ttl after it ended, and not before its Idempotency-Key
 * expires. */
static int64_t retention_due(const db_store *db, const Kiln__V1__JobRecord *rec, int64_t ttl_ms)
{
    int64_t ended = apply_finished_at(rec), due = ended + ttl_ms;
    const char *key = rec->request->idempotency_key;
    int64_t created = rec->status->created_at_ms < ended ? rec->status->created_at_ms : ended;
    int64_t key_gone = created + db->idem_ttl_ms + RETENTION_IDEM_MARGIN_MS;
    if (key != NULL && key[0] != '\0' && key_gone > due) due = key_gone;
    return due;
}

/* Handles one due entry: removes its record, moves it, or drops it when it
 * names no terminal record. */
static kiln_status retention_one(db_store *db, db_batch *wb, const char *k, size_t kl,
                                 int64_t ttl_ms, int64_t now_ms, size_t *removed)
{
    char id[KILN_ID_MAX_LEN + 1];
    uint8_t moved[KEYS_MAX];
    Kiln__V1__JobRecord *rec = NULL;
    db_batch_delete(wb, DB_CF_FINISHED, k, kl);
    if (kl <= 8 || kl - 8 > KILN_ID_MAX_LEN) return KILN_OK; /* malformed: dropped */
    memcpy(id, k + 8, kl - 8);
    id[kl - 8] = '\0';
    kiln_status st = db_load_record(db, NULL, wb, id, &rec);
    if (st == KILN_ENOTFOUND) return KILN_OK;
    if (st == KILN_EIO) { /* undecodable: it can never be judged */
        LOG_WARN("retention skips an unreadable record job=%s", id);
        return KILN_OK;
    }
    if (st != KILN_OK) return st;
    if (!kiln_state_is_terminal(rec->status->state)) goto out; /* stale entry */
    int64_t due = retention_due(db, rec, ttl_ms);
    if (due > now_ms) {
        size_t ml = keys_finished(moved, due - ttl_ms, id);
        if (ml > 0) db_batch_put(wb, DB_CF_FINISHED, (const char *)moved, ml, "", 0);
        goto out;
    }
    st = apply_stage_remove(db, wb, rec);
    if (st == KILN_OK) (*removed)++;
out:
    kiln__v1__job_record__free_unpacked(rec, NULL);
    return st;
}

/* Destroys it: KILN_EIO (logged) when it stopped on an error. */
static kiln_status retention_iter_end(rocksdb_iterator_t *it, const char *step)
{
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err == NULL) return KILN_OK;
    LOG_WARN("retention scan failed step=%s err=\"%s\"", step, err);
    rocksdb_free(err);
    return KILN_EIO;
}

kiln_status retention_pass(db_store *db, retention_cursor *cur, int64_t ttl_ms, int64_t now_ms,
                           size_t max, size_t *removed, int *more)
{
    db_batch *wb = NULL;
    *removed = 0;
    *more = 0;
    if (cur->len == 0) {
        /* The oldest entry may lie behind every delete marker of earlier
         * ticks (~0.12 us each until compaction drops them): found without
         * db_lock(), which would hold up the apply loop meanwhile. */
        rocksdb_iterator_t *first =
            rocksdb_create_iterator_cf(db->db, db->ro, db->cf[DB_CF_FINISHED]);
        rocksdb_iter_seek_to_first(first);
        size_t kl = 0;
        const char *k = rocksdb_iter_valid(first) ? rocksdb_iter_key(first, &kl) : NULL;
        if (k != NULL && kl <= sizeof cur->key) {
            memcpy(cur->key, k, kl);
            cur->len = kl;
        }
        kiln_status fst = retention_iter_end(first, "first");
        if (fst != KILN_OK || k == NULL) return fst;
    }
    kiln_status st = db_batch_create(&wb);
    if (st != KILN_OK) return st;
    db_lock(db);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(db->db, db->ro, db->cf[DB_CF_FINISHED]);
    size_t seen = 0;
    if (cur->len > 0) rocksdb_iter_seek(it, (const char *)cur->key, cur->len);
    else rocksdb_iter_seek_to_first(it);
    for (; rocksdb_iter_valid(it) && st == KILN_OK; rocksdb_iter_next(it)) {
        size_t kl = 0;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl >= 8 && (int64_t)keys_get_be64((const uint8_t *)k) > now_ms - ttl_ms) break;
        if (seen == max && kl <= sizeof cur->key) {
            memcpy(cur->key, k, kl);
            cur->len = kl;
            *more = 1;
            break;
        }
        seen++;
        st = retention_one(db, wb, k, kl, ttl_ms, now_ms, removed);
    }
    kiln_status ist = retention_iter_end(it, "scan");
    if (st == KILN_OK) st = ist;
    if (st == KILN_OK && seen > 0) st = db_write(db, wb);
    db_unlock(db);
    db_batch_destroy(wb);
    if (st != KILN_OK) *removed = 0;
    return st;
}

/* Writes the finished entries of a chunk of records (they never conflict
 * with the apply loop's: it writes the same entry for a job that ends). */
static kiln_status retention_index_flush(db_store *db, db_batch *wb, size_t *staged)
{
    kiln_status st = *staged > 0 ? db_write(db, wb) : KILN_OK;
    db_batch_clear(wb);
    *staged = 0;
    return st;
}

kiln_status retention_index_all(db_store *db, kiln_periodic *p)
{
    uint64_t done = 0;
    kiln_status st = db_get_u64(db, NULL, DB_CF_META, DB_META_FINISHED_INDEXED,
                                strlen(DB_META_FINISHED_INDEXED), &done);
    if (st != KILN_OK || done) return st;
    db_batch *wb = NULL;
    if ((st = db_batch_create(&wb)) != KILN_OK) return st;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(db->db, db->ro, db->cf[DB_CF_JOBS]);
    size_t staged = 0, total = 0;
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it) && st == KILN_OK;
         rocksdb_iter_next(it)) {
        size_t vl = 0;
        const char *v = rocksdb_iter_value(it, &vl);
        Kiln__V1__JobRecord *rec = kiln__v1__job_record__unpack(NULL, vl, (const uint8_t *)v);
        if (rec == NULL || rec->status == NULL || rec->request == NULL ||
            !kiln_state_is_terminal(rec->status->state)) {
            if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
            continue;
        }
        uint8_t key[KEYS_MAX];
        size_t kl = keys_finished(key, apply_finished_at(rec), rec->request->id);
        if (kl > 0) {
            db_batch_put(wb, DB_CF_FINISHED, (const char *)key, kl, "", 0);
            staged++;
            total++;
        }
        kiln__v1__job_record__free_unpacked(rec, NULL);
        if (staged == RETENTION_INDEX_CHUNK) st = retention_index_flush(db, wb, &staged);
        if (p != NULL && kiln_periodic_stopping(p)) st = KILN_ESTOPPED; /* again at the next start */
    }
    kiln_status ist = retention_iter_end(it, "index");
    if (st == KILN_OK) st = ist;
    if (st == KILN_OK) st = retention_index_flush(db, wb, &staged);
    if (st == KILN_OK) {
        db_put_u64(db, wb, DB_CF_META, DB_META_FINISHED_INDEXED,
                   strlen(DB_META_FINISHED_INDEXED), 1);
        st = db_write(db, wb);
    }
    db_batch_destroy(wb);
    if (st == KILN_OK) LOG_INFO("retention indexed finished jobs count=%zu", total);
    return st;
}

static void retention_tick(kiln_periodic *p, void *arg)
{
    retention *r = arg;
    if (!r->indexed) {
        if (retention_index_all(r->db, p) != KILN_OK) return; /* again next time */
        r->indexed = 1;
    }
    /* Each tick starts at the oldest entry (a late transition may have
     * added one before where the last tick stopped); within a tick each
     * pass resumes where the last one stopped, so it does not walk the
     * delete markers of the entries just removed again. */
    retention_cursor cur = {.len = 0};
    int more = 1;
    while (more && !kiln_periodic_stopping(p)) {
        size_t removed = 0;
        if (retention_pass(r->db, &cur, r->ttl_ms, kiln_now_ms(), RETENTION_PASS_MAX, &removed,
                           &more) != KILN_OK)
            return;
        kiln_metric_add(r->m_removed, (int64_t)removed);
        if (removed > 0) LOG_DEBUG("retention removed jobs count=%zu", removed);
    }
}

kiln_status retention_start(db_store *db, int64_t ttl_ms, retention **out)
{
    *out = NULL;
    if (ttl_ms <= 0) {
        LOG_INFO("retention off: finished jobs are kept for ever");
        return KILN_OK;
    }
    retention *r = calloc(1, sizeof *r);
    if (r == NULL) return KILN_ENOMEM;
    r->db = db;
    r->ttl_ms = ttl_ms;
    r->m_removed = kiln_metric_counter("kiln_store_jobs_expired_total",
                                       "finished jobs removed after KILN_RESULT_TTL");
    int64_t interval = kiln_periodic_retention_ms(ttl_ms);
    if (kiln_periodic_start("kiln-retention", interval, retention_tick, r, &r->timer) != KILN_OK) {
        free(r);
        return KILN_ERR;
    }
    LOG_INFO("retention started ttl_ms=%lld interval_ms=%lld", (long long)ttl_ms,
             (long long)interval);
    *out = r;
    return KILN_OK;
}

void retention_stop(retention *r)
{
    if (r == NULL) return;
    kiln_periodic_stop(r->timer);
    free(r);
}
