/* test_store_retention.c - finished jobs' records are removed after the
 * result TTL (store/retention.c) against a real RocksDB in a temporary
 * directory: the record, its index entries and its share of the counters
 * go; unfinished jobs and jobs whose Idempotency-Key is still honoured stay. */
#define _XOPEN_SOURCE 700
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../store/apply.h"
#include "../../store/keys.h"
#include "../../store/retention.h"
#include "clock.h"
#include "pb.h"
#include "ut_tmpdir.h"
#include "ut_store.h"

#define PENDING KILN__V1__JOB_STATE__JOB_STATE_PENDING
#define COMPLETED KILN__V1__JOB_STATE__JOB_STATE_COMPLETED
#define FAILED KILN__V1__JOB_STATE__JOB_STATE_FAILED
#define DAY_MS (24LL * 3600 * 1000)
#define IDEM_TTL_MS (2 * DAY_MS)
#define CREATED_MS 1795503882000LL
#define TTL_MS 60000LL

static char rdir[64];
static db_store *rdb;

static void ret_setup(void)
{
    cr_assert_eq(ut_tmpdir_make(rdir, sizeof rdir, "kiln-retention-test"), 0);
    cr_assert_eq(db_open(rdir, IDEM_TTL_MS, 8u << 20, &rdb), KILN_OK);
}

static void ret_teardown(void)
{
    db_close(rdb);
    rdb = NULL;
    (void)ut_tmpdir_remove(rdir);
}

TestSuite(store_retention, .init = ret_setup, .fini = ret_teardown);

/* Applies one packed message (a JobRequest when is_request) in a batch of its own. */
static void apply_msg(const ProtobufCMessage *m, int is_request)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    apply_sink sink;
    db_batch *wb = NULL;
    memset(&sink, 0, sizeof sink);
    cr_assert_eq(kiln_pb_pack(m, &buf, &len), KILN_OK);
    cr_assert_eq(db_batch_create(&wb), KILN_OK);
    db_lock(rdb);
    kiln_status st = is_request
                         ? apply_job_request(rdb, wb, NULL, buf, len, CREATED_MS, 1, &sink, &changed)
                         : apply_transition(rdb, wb, buf, len, &sink, &changed);
    if (st == KILN_OK) st = db_write(rdb, wb);
    db_unlock(rdb);
    cr_assert_eq(st, KILN_OK);
    cr_assert_eq(changed, 1);
    apply_sink_free(&sink);
    db_batch_destroy(wb);
    free(buf);
}

static void req_init(Kiln__V1__JobRequest *r, const char *id, const char *user, const char *idem)
{
    kiln__v1__job_request__init(r);
    r->id = (char *)id;
    r->user_id = (char *)user;
    r->prompt = "a red fox";
    r->created_at_ms = CREATED_MS;
    if (idem != NULL) r->idempotency_key = (char *)idem;
}

static void submit(const char *id, const char *user, const char *idem)
{
    Kiln__V1__JobRequest r;
    req_init(&r, id, user, idem);
    apply_msg(&r.base, 1);
}

/* Submits id and ends it in state at at_ms. */
static void finish(const char *id, const char *user, const char *idem, Kiln__V1__JobState state,
                   int64_t at_ms)
{
    Kiln__V1__JobRequest r;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    submit(id, user, idem);
    req_init(&r, id, user, idem);
    t.request = &r;
    t.state = state;
    t.attempt = 1;
    t.at_ms = at_ms;
    apply_msg(&t.base, 0);
}

static retention_cursor cursor; /* a run of passes: reset by pass() unless more */

static size_t pass(int64_t now_ms, size_t max, int *more)
{
    size_t removed = 0;
    int more_local = 0;
    if (more == NULL || !*more) cursor.len = 0;
    cr_assert_eq(retention_pass(rdb, &cursor, TTL_MS, now_ms, max, &removed, &more_local),
                 KILN_OK);
    if (more != NULL) *more = more_local;
    return removed;
}

static int exists(const char *id)
{
    Kiln__V1__JobRecord *rec = NULL;
    kiln_status st = db_load_record(rdb, NULL, NULL, id, &rec);
    if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    cr_assert(st == KILN_OK || st == KILN_ENOTFOUND);
    return st == KILN_OK;
}

static size_t cf_count(db_cf cf)
{
    size_t n = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(rdb->db, rdb->ro, rdb->cf[cf]);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) n++;
    rocksdb_iter_destroy(it);
    return n;
}

static uint64_t counter(const char *user, keys_counter_kind kind)
{
    return ut_store_counter(rdb, user, kind);
}

Test(store_retention, finished_jobs_go_after_the_ttl_with_their_entries)
{
    int64_t t = CREATED_MS + 5000;
    finish("done1", "alice", NULL, COMPLETED, t);
    finish("fail1", "alice", NULL, FAILED, t + 10);
    submit("wait1", "alice", NULL);
    /* Viewed: no longer unviewed, so its removal must not lower that counter. */
    db_batch *wb = NULL;
    cr_assert_eq(db_batch_create(&wb), KILN_OK);
    db_lock(rdb);
    cr_assert_eq(apply_viewed(rdb, wb, "fail1", "alice", NULL), KILN_OK);
    cr_assert_eq(db_write(rdb, wb), KILN_OK);
    db_unlock(rdb);
    db_batch_destroy(wb);
    cr_assert_eq(counter("alice", KEYS_COUNTER_UNVIEWED), 1);
    cr_assert_eq(counter("alice", KEYS_COUNTER_ACTIVE), 1);
    cr_assert_eq(cf_count(DB_CF_FINISHED), 2);

    cr_assert_eq(pass(t + TTL_MS - 1, 100, NULL), 0, "not due a millisecond early");
    cr_assert(exists("done1"));
    cr_assert_eq(pass(t + TTL_MS, 100, NULL), 1);
    cr_assert(!exists("done1"));
    cr_assert(exists("fail1"));
    cr_assert_eq(counter("alice", KEYS_COUNTER_UNVIEWED), 0);
    cr_assert_eq(pass(t + 10 + TTL_MS, 100, NULL), 1);
    cr_assert(!exists("fail1"));

    /* Only the unfinished job is left, everywhere. */
    cr_assert(exists("wait1"));
    cr_assert_eq(pass(t + 100 * DAY_MS, 100, NULL), 0, "a pending job never expires");
    cr_assert(exists("wait1"));
    cr_assert_eq(cf_count(DB_CF_JOBS), 1);
    cr_assert_eq(cf_count(DB_CF_BY_USER), 1);
    cr_assert_eq(cf_count(DB_CF_BY_USER_STATE), 1);
    cr_assert_eq(cf_count(DB_CF_UNVIEWED), 0);
    cr_assert_eq(cf_count(DB_CF_FINISHED), 0);
    cr_assert_eq(counter("alice", KEYS_COUNTER_UNVIEWED), 0);
    cr_assert_eq(counter("alice", KEYS_COUNTER_ACTIVE), 1);
}

Test(store_retention, a_job_with_an_idempotency_key_stays_while_the_key_is_honoured)
{
    int64_t t = CREATED_MS + 5000;
    finish("keyed", "bob", "order-7", COMPLETED, t);
    finish("plain", "bob", NULL, COMPLETED, t);
    cr_assert_eq(pass(t + TTL_MS, 100, NULL), 1);
    cr_assert(exists("keyed"), "its key is honoured for KILN_IDEM_TTL after it was made");
    cr_assert(!exists("plain"));
    cr_assert_eq(cf_count(DB_CF_FINISHED), 1, "the entry moved, not dropped");
    /* A minute's margin: the key's clock starts a little after created_at. */
    cr_assert_eq(pass(CREATED_MS + IDEM_TTL_MS + 60000 - 1, 100, NULL), 0);
    cr_assert(exists("keyed"));
    cr_assert_eq(pass(CREATED_MS + IDEM_TTL_MS + 60000, 100, NULL), 1);
    cr_assert(!exists("keyed"));
    cr_assert_eq(cf_count(DB_CF_FINISHED), 0);
}

Test(store_retention, a_pass_stops_at_its_limit_and_the_next_goes_on)
{
    char id[16];
    int64_t t = CREATED_MS + 5000;
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "job%d", i);
        finish(id, "carol", NULL, COMPLETED, t + i);
    }
    int more = 0; /* a new run */
    cr_assert_eq(pass(t + 4 + TTL_MS, 2, &more), 2);
    cr_assert_eq(more, 1);
    cr_assert(!exists("job0") && !exists("job1") && exists("job2"), "oldest first");
    cr_assert_eq(pass(t + 4 + TTL_MS, 2, &more), 2);
    cr_assert_eq(more, 1);
    cr_assert_eq(pass(t + 4 + TTL_MS, 2, &more), 1);
    cr_assert_eq(more, 0);
    cr_assert_eq(cf_count(DB_CF_JOBS), 0);
}

Test(store_retention, records_of_an_older_store_are_indexed_once)
{
    int64_t t = CREATED_MS + 5000;
    finish("old1", "dave", NULL, COMPLETED, t);
    finish("old2", "dave", NULL, FAILED, t);
    submit("old3", "dave", NULL);
    /* As written by a version without finished entries. */
    db_batch *wb = NULL;
    cr_assert_eq(db_batch_create(&wb), KILN_OK);
    uint8_t k[KEYS_MAX];
    db_batch_delete(wb, DB_CF_FINISHED, (const char *)k, keys_finished(k, t, "old1"));
    db_batch_delete(wb, DB_CF_FINISHED, (const char *)k, keys_finished(k, t, "old2"));
    cr_assert_eq(db_write(rdb, wb), KILN_OK);
    db_batch_destroy(wb);
    cr_assert_eq(pass(t + TTL_MS, 100, NULL), 0, "nothing indexed, nothing found");

    cr_assert_eq(retention_index_all(rdb, NULL), KILN_OK);
    cr_assert_eq(cf_count(DB_CF_FINISHED), 2, "the two finished jobs, not the pending one");
    cr_assert_eq(pass(t + TTL_MS, 100, NULL), 2);
    cr_assert(!exists("old1") && !exists("old2") && exists("old3"));

    /* Done once: a later call does not scan again. */
    finish("old4", "dave", NULL, COMPLETED, t);
    cr_assert_eq(db_batch_create(&wb), KILN_OK);
    db_batch_delete(wb, DB_CF_FINISHED, (const char *)k, keys_finished(k, t, "old4"));
    cr_assert_eq(db_write(rdb, wb), KILN_OK);
    db_batch_destroy(wb);
    cr_assert_eq(retention_index_all(rdb, NULL), KILN_OK);
    cr_assert_eq(cf_count(DB_CF_FINISHED), 0);
}

/* A transition stamped by a clock far ahead cannot keep its record for
 * ever: a job ended no later than the store wrote it. */
Test(store_retention, a_job_said_to_end_in_the_future_ends_when_the_store_wrote_it)
{
    int64_t written = kiln_now_ms();
    finish("ahead", "erin", NULL, COMPLETED, written + 100 * DAY_MS);
    int64_t after = kiln_now_ms();
    cr_assert_eq(pass(written - 1 + TTL_MS, 100, NULL), 0);
    cr_assert_eq(pass(after + TTL_MS, 100, NULL), 1);
    cr_assert(!exists("ahead"));
}
