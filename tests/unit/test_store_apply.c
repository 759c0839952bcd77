/* test_store_apply.c - unit tests for the store's transition rules: the pure
 * decision (apply_decide) and the applied result against a real RocksDB in a
 * temporary directory (records, counters, jobs.done and event lists,
 * request_seq, Idempotency-Key reservations and their expiry). */
#define _XOPEN_SOURCE 700
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../store/apply.h"
#include "../../store/idem.h"
#include "../../store/keys.h"
#include "clock.h"
#include "pb.h"
#include "ut_tmpdir.h"
#include "ut_store.h"

#define PENDING KILN__V1__JOB_STATE__JOB_STATE_PENDING
#define PROCESSING KILN__V1__JOB_STATE__JOB_STATE_PROCESSING
#define COMPLETED KILN__V1__JOB_STATE__JOB_STATE_COMPLETED
#define FAILED KILN__V1__JOB_STATE__JOB_STATE_FAILED
#define CANCELLED KILN__V1__JOB_STATE__JOB_STATE_CANCELLED
#define DAY_MS (24LL * 3600 * 1000)

static apply_rule decide(Kiln__V1__JobState cur, uint32_t attempts, Kiln__V1__JobState to,
                         uint32_t attempt)
{
    Kiln__V1__JobStatus s = KILN__V1__JOB_STATUS__INIT;
    s.state = cur;
    s.attempts = attempts;
    return apply_decide(&s, to, attempt);
}

/* ---- the pure rules ------------------------------------------------------ */

Test(store_rules, terminal_never_changes)
{
    Kiln__V1__JobState terminal[] = {COMPLETED, FAILED, CANCELLED};
    Kiln__V1__JobState to[] = {PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED};
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 5; j++) {
            apply_rule r = decide(terminal[i], 2, to[j], 9);
            cr_assert_eq(r, terminal[i] == to[j] ? APPLY_RULE_REPUBLISH : APPLY_RULE_IGNORE,
                         "from %d to %d", terminal[i], to[j]);
        }
}

Test(store_rules, stale_attempts_are_ignored)
{
    cr_assert_eq(decide(PROCESSING, 3, PROCESSING, 2), APPLY_RULE_IGNORE);
    cr_assert_eq(decide(PROCESSING, 3, PENDING, 2), APPLY_RULE_IGNORE);
    cr_assert_eq(decide(PROCESSING, 3, COMPLETED, 2), APPLY_RULE_IGNORE);
    cr_assert_eq(decide(PROCESSING, 3, FAILED, 1), APPLY_RULE_IGNORE);
}

Test(store_rules, cancelled_is_never_stale)
{
    cr_assert_eq(decide(PROCESSING, 3, CANCELLED, 0), APPLY_RULE_APPLY);
    cr_assert_eq(decide(PENDING, 2, CANCELLED, 1), APPLY_RULE_APPLY);
    cr_assert_eq(decide(PENDING, 0, CANCELLED, 0), APPLY_RULE_APPLY);
}

Test(store_rules, normal_progress_applies)
{
    cr_assert_eq(decide(PENDING, 0, PROCESSING, 1), APPLY_RULE_APPLY);
    cr_assert_eq(decide(PROCESSING, 1, PROCESSING, 1), APPLY_RULE_APPLY, "a duplicate rewrites");
    cr_assert_eq(decide(PROCESSING, 1, PENDING, 1), APPLY_RULE_APPLY, "retry");
    cr_assert_eq(decide(PENDING, 1, PROCESSING, 2), APPLY_RULE_APPLY, "next attempt");
    cr_assert_eq(decide(PROCESSING, 2, COMPLETED, 2), APPLY_RULE_APPLY);
    cr_assert_eq(decide(PENDING, 0, FAILED, 0), APPLY_RULE_APPLY, "invalid job fails at once");
}

Test(store_rules, late_processing_after_retry_is_ignored)
{
    /* Attempt 1 was handed back (pending, attempts 1): its PROCESSING
     * arriving late must not make the job look running again. */
    cr_assert_eq(decide(PENDING, 1, PROCESSING, 1), APPLY_RULE_IGNORE);
}

Test(store_rules, unknown_states_are_ignored)
{
    cr_assert_eq(decide(PENDING, 0, KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED, 1),
                 APPLY_RULE_IGNORE);
    cr_assert_eq(decide(PENDING, 0, (Kiln__V1__JobState)42, 1), APPLY_RULE_IGNORE);
}

/* ---- against RocksDB ------------------------------------------------------- */

static char tdir[64];
static db_store *tdb;
static apply_sink sink;
static db_batch *twb;

static void db_setup(void)
{
    cr_assert_eq(ut_tmpdir_make(tdir, sizeof tdir, "kiln-store-test"), 0);
    cr_assert_eq(db_open(tdir, 2 * DAY_MS, 8u << 20, &tdb), KILN_OK);
    cr_assert_eq(db_batch_create(&twb), KILN_OK);
    memset(&sink, 0, sizeof sink);
}

static void db_teardown(void)
{
    apply_sink_free(&sink);
    db_batch_destroy(twb);
    db_close(tdb);
    tdb = NULL;
    twb = NULL;
    (void)ut_tmpdir_remove(tdir);
}

TestSuite(store_apply, .init = db_setup, .fini = db_teardown);

static void begin(int replay)
{
    apply_sink_reset(&sink);
    sink.replay = replay;
    db_batch_clear(twb);
    db_lock(tdb);
}

static void commit(void)
{
    kiln_status st = db_write(tdb, twb);
    db_unlock(tdb);
    cr_assert_eq(st, KILN_OK);
}

/* A JobRequest for id/user with the fixed prompt the tests use. */
static void req_init(Kiln__V1__JobRequest *r, const char *id, const char *user)
{
    kiln__v1__job_request__init(r);
    r->id = (char *)id;
    r->user_id = (char *)user;
    r->prompt = "a red fox";
}

static int job_request(const char *id, const char *user, const char *idem, uint64_t seq,
                       int replay)
{
    Kiln__V1__JobRequest r;
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    req_init(&r, id, user);
    r.created_at_ms = 1795503882123LL;
    if (idem != NULL) r.idempotency_key = (char *)idem;
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
    begin(replay);
    kiln_status st = apply_job_request(tdb, twb, NULL, buf, len, kiln_now_ms(), seq, &sink, &changed);
    commit();
    free(buf);
    cr_assert_eq(st, KILN_OK);
    return changed;
}

/* Applies t in a batch of its own; whether it changed the record. */
static int apply_tx(const Kiln__V1__JobTransition *t, int replay)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    cr_assert_eq(kiln_pb_pack(&t->base, &buf, &len), KILN_OK);
    begin(replay);
    kiln_status st = apply_transition(tdb, twb, buf, len, &sink, &changed);
    commit();
    free(buf);
    cr_assert_eq(st, KILN_OK);
    return changed;
}

/* A transition carrying started_at_ms (0 = none), at_ms fixed at TX_AT_MS. */
#define TX_AT_MS 1795503890000LL
static int transition_started(const char *id, const char *user, Kiln__V1__JobState state,
                              uint32_t attempt, int64_t started_at_ms, int replay)
{
    Kiln__V1__JobRequest r;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    req_init(&r, id, user);
    t.request = &r;
    t.state = state;
    t.attempt = attempt;
    t.at_ms = TX_AT_MS;
    t.started_at_ms = started_at_ms;
    return apply_tx(&t, replay);
}

static int transition(const char *id, const char *user, Kiln__V1__JobState state,
                      uint32_t attempt, int replay)
{
    return transition_started(id, user, state, attempt, 0, replay);
}

static Kiln__V1__JobRecord *load(const char *id)
{
    Kiln__V1__JobRecord *rec = NULL;
    cr_assert_eq(db_load_record(tdb, NULL, NULL, id, &rec), KILN_OK);
    return rec;
}

static uint64_t counter(const char *user, keys_counter_kind kind)
{
    return ut_store_counter(tdb, user, kind);
}

Test(store_apply, job_request_creates_pending_with_request_seq_and_event)
{
    cr_assert_eq(job_request("j1", "alice", NULL, 17, 0), 1);
    cr_assert_eq(sink.events.n, 1);
    cr_assert_str_eq(sink.events.items[0].key, "j1.pending.0.ev");
    /* A record's first event goes to its user's EventBatch subject. */
    cr_assert_str_eq(sink.events.items[0].subject, "kiln.events.616c696365.$new");
    cr_assert(sink.events.items[0].fresh);
    cr_assert_eq(sink.done.n, 0);
    Kiln__V1__JobRecord *rec = load("j1");
    cr_assert_eq(rec->status->state, PENDING);
    cr_assert_eq(rec->request_seq, 17);
    kiln__v1__job_record__free_unpacked(rec, NULL);
    cr_assert_eq(counter("alice", KEYS_COUNTER_ACTIVE), 1);

    /* A second copy changes nothing and keeps the first sequence. */
    cr_assert_eq(job_request("j1", "alice", NULL, 99, 0), 0);
    cr_assert_eq(sink.events.n, 0);
    /* A redelivery of the same message announces the record again. */
    cr_assert_eq(job_request("j1", "alice", NULL, 17, 1), 0);
    cr_assert_eq(sink.events.n, 1);
    rec = load("j1");
    cr_assert_eq(rec->request_seq, 17);
    kiln__v1__job_record__free_unpacked(rec, NULL);
}

/* Applies alice's request id with field priority prio, as if it came on
 * subject (NULL: no subject known), in a batch of its own. */
static void job_request_on(const char *subject, const char *id, Kiln__V1__Priority prio, uint64_t seq)
{
    Kiln__V1__JobRequest r;
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    req_init(&r, id, "alice");
    r.priority = prio;
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
    begin(0);
    kiln_status st = apply_job_request(tdb, twb, subject, buf, len, kiln_now_ms(), seq, &sink, &changed);
    commit();
    free(buf);
    cr_assert_eq(st, KILN_OK);
    cr_assert_eq(changed, 1);
}

/* The lane subject a request came on decides the record's priority; a
 * caller without one (NULL) keeps the request's field. */
Test(store_apply, the_lane_subject_decides_the_recorded_priority)
{
    job_request_on("jobs.generate.high", "laned", KILN__V1__PRIORITY__PRIORITY_LOW, 3);
    job_request_on(NULL, "fielded", KILN__V1__PRIORITY__PRIORITY_LOW, 4);
    Kiln__V1__JobRecord *rec = load("laned");
    cr_expect_eq(rec->request->priority, KILN__V1__PRIORITY__PRIORITY_HIGH);
    kiln__v1__job_record__free_unpacked(rec, NULL);
    rec = load("fielded");
    cr_expect_eq(rec->request->priority, KILN__V1__PRIORITY__PRIORITY_LOW);
    kiln__v1__job_record__free_unpacked(rec, NULL);
}

Test(store_apply, life_of_a_job_with_retry)
{
    job_request("j2", "bob", NULL, 1, 0);
    cr_assert_eq(transition("j2", "bob", PROCESSING, 1, 0), 1);
    cr_assert_str_eq(sink.events.items[0].key, "j2.processing.1.ev");
    cr_assert_str_eq(sink.events.items[0].subject, "kiln.events.626f62.j2");
    cr_assert(!sink.events.items[0].fresh);
    cr_assert_eq(transition("j2", "bob", PENDING, 1, 0), 1);
    cr_assert_str_eq(sink.events.items[0].key, "j2.pending.1.ev");
    /* Pending again after a failed attempt is a change of the job: its subject. */
    cr_assert_str_eq(sink.events.items[0].subject, "kiln.events.626f62.j2");
    cr_assert(!sink.events.items[0].fresh);
    /* The late duplicate of attempt 1 starting: ignored, no event. */
    cr_assert_eq(transition("j2", "bob", PROCESSING, 1, 0), 0);
    cr_assert_eq(sink.events.n, 0);
    cr_assert_eq(transition("j2", "bob", PROCESSING, 2, 0), 1);
    cr_assert_eq(transition("j2", "bob", COMPLETED, 2, 0), 1);
    cr_assert_eq(sink.done.n, 1);
    cr_assert_eq(sink.done.items[0].state, COMPLETED);
    cr_assert_eq(sink.events.n, 1);
    cr_assert_str_eq(sink.events.items[0].key, "j2.completed.2.ev");
    cr_assert_eq(counter("bob", KEYS_COUNTER_ACTIVE), 0);
    cr_assert_eq(counter("bob", KEYS_COUNTER_UNVIEWED), 1);

    /* The same terminal state again in a new message: no second announcement;
     * in a redelivered one (crash replay): jobs.done and the event again. */
    cr_assert_eq(transition("j2", "bob", COMPLETED, 2, 0), 0);
    cr_assert_eq(sink.done.n, 0);
    cr_assert_eq(sink.events.n, 0);
    cr_assert_eq(transition("j2", "bob", COMPLETED, 2, 1), 0);
    cr_assert_eq(sink.done.n, 1);
    cr_assert_eq(sink.events.n, 1);
    /* Another terminal state: nothing. */
    cr_assert_eq(transition("j2", "bob", FAILED, 3, 0), 0);
    cr_assert_eq(sink.done.n + sink.events.n, 0);
    Kiln__V1__JobRecord *rec = load("j2");
    cr_assert_eq(rec->status->state, COMPLETED);
    cr_assert_eq(rec->status->attempts, 2);
    kiln__v1__job_record__free_unpacked(rec, NULL);
}

Test(store_apply, cancel_with_an_older_attempt_still_cancels)
{
    job_request("j3", "carol", NULL, 1, 0);
    transition("j3", "carol", PROCESSING, 3, 0);
    /* The store read attempts 1 when it published the cancel. */
    cr_assert_eq(transition("j3", "carol", CANCELLED, 1, 0), 1);
    cr_assert_eq(sink.done.n, 1);
    cr_assert_eq(sink.done.items[0].state, CANCELLED);
    cr_assert_str_eq(sink.events.items[0].key, "j3.cancelled.3.ev");
    Kiln__V1__JobRecord *rec = load("j3");
    cr_assert_eq(rec->status->state, CANCELLED);
    cr_assert_eq(rec->status->attempts, 3);
    cr_assert_not_null(rec->status->error);
    cr_assert_str_eq(rec->status->error->code, "cancelled");
    kiln__v1__job_record__free_unpacked(rec, NULL);
    cr_assert_eq(counter("carol", KEYS_COUNTER_ACTIVE), 0);
    /* The consumer's result arriving after the cancel is ignored. */
    cr_assert_eq(transition("j3", "carol", COMPLETED, 3, 0), 0);
    cr_assert_eq(sink.done.n, 0);
}

Test(store_apply, viewed_is_an_event_once)
{
    events_list ev = {0};
    job_request("j4", "dave", NULL, 1, 0);
    transition("j4", "dave", FAILED, 1, 0);
    begin(0);
    cr_assert_eq(apply_viewed(tdb, twb, "j4", "dave", &ev), KILN_OK);
    commit();
    cr_assert_eq(ev.n, 1);
    cr_assert_str_eq(ev.items[0].key, "j4.viewed.1.ev");
    cr_assert_eq(counter("dave", KEYS_COUNTER_UNVIEWED), 0);
    events_reset(&ev);
    begin(0);
    cr_assert_eq(apply_viewed(tdb, twb, "j4", "dave", &ev), KILN_OK);
    commit();
    cr_assert_eq(ev.n, 0, "already viewed");
    begin(0);
    cr_assert_eq(apply_viewed(tdb, twb, "j4", "eve", &ev), KILN_ENOTFOUND);
    db_unlock(tdb);
    events_free(&ev);
}

static int64_t started_at(const char *id)
{
    Kiln__V1__JobRecord *rec = load(id);
    int64_t v = rec->status->started_at_ms;
    kiln__v1__job_record__free_unpacked(rec, NULL);
    return v;
}

Test(store_apply, started_at_from_a_completed_without_processing)
{
    /* A quick provider call: no PROCESSING, the result carries the start. */
    job_request("j7", "frank", NULL, 1, 0);
    cr_assert_eq(started_at("j7"), 0);
    cr_assert_eq(transition_started("j7", "frank", COMPLETED, 1, TX_AT_MS - 4000, 0), 1);
    Kiln__V1__JobRecord *rec = load("j7");
    cr_assert_eq(rec->status->state, COMPLETED);
    cr_assert_eq(rec->status->started_at_ms, TX_AT_MS - 4000, "taken from the transition");
    cr_assert_eq(rec->status->completed_at_ms, TX_AT_MS);
    kiln__v1__job_record__free_unpacked(rec, NULL);
    /* The jobs.done status carries it too. */
    cr_assert_eq(sink.done.n, 1);
    Kiln__V1__JobStatus *ds = kiln__v1__job_status__unpack(NULL, sink.done.items[0].status_len,
                                                           sink.done.items[0].status_pb);
    cr_assert_not_null(ds);
    cr_assert_eq(ds->started_at_ms, TX_AT_MS - 4000);
    kiln__v1__job_status__free_unpacked(ds, NULL);
}

/* A COMPLETED transition with one saved image at pack:offset. */
static int completed_with_blob(const char *id, const char *user, uint32_t attempt,
                               const char *pack, uint64_t offset)
{
    Kiln__V1__JobRequest r;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__Image img = KILN__V1__IMAGE__INIT, *imgs[1] = {&img};
    Kiln__V1__ImageBlob blob = KILN__V1__IMAGE_BLOB__INIT, *blobs[1] = {&blob};
    req_init(&r, id, user);
    t.request = &r;
    t.state = COMPLETED;
    t.attempt = attempt;
    t.at_ms = TX_AT_MS;
    img.url = "/v1/jobs/x/images/0";
    img.content_type = "image/png";
    img.size_bytes = 77;
    blob.pack = (char *)pack;
    blob.offset = offset;
    blob.size = 77;
    t.n_images = 1;
    t.images = imgs;
    t.n_blobs = 1;
    t.blobs = blobs;
    return apply_tx(&t, 0);
}

/* The record keeps where the images' bytes are; a redelivered copy that
 * saved its images again (another pack) changes nothing: the record, and so
 * the image the gateway serves, stay the first result's. */
Test(store_apply, completed_keeps_the_image_blobs_of_the_first_result)
{
    job_request("j9", "gina", NULL, 1, 0);
    cr_assert_eq(completed_with_blob("j9", "gina", 1, "p1.pack", 4096), 1);
    cr_assert_eq(completed_with_blob("j9", "gina", 1, "p2.pack", 0), 0);
    Kiln__V1__JobRecord *rec = load("j9");
    cr_assert_eq(rec->status->n_images, 1);
    cr_assert_eq(rec->n_blobs, 1);
    cr_assert_str_eq(rec->blobs[0]->pack, "p1.pack");
    cr_assert_eq(rec->blobs[0]->offset, 4096);
    cr_assert_eq(rec->blobs[0]->size, 77);
    kiln__v1__job_record__free_unpacked(rec, NULL);
}

Test(store_apply, started_at_from_a_pending_retry_is_never_overwritten)
{
    /* Attempt 1 failed retryably without a PROCESSING: the retry carries
     * when it began. */
    job_request("j8", "grace", NULL, 1, 0);
    cr_assert_eq(transition_started("j8", "grace", PENDING, 1, TX_AT_MS - 9000, 0), 1);
    cr_assert_eq(started_at("j8"), TX_AT_MS - 9000);
    /* Later attempts, with or without their own start, keep the first one. */
    cr_assert_eq(transition_started("j8", "grace", PROCESSING, 2, TX_AT_MS - 1000, 0), 1);
    cr_assert_eq(started_at("j8"), TX_AT_MS - 9000, "PROCESSING does not overwrite");
    cr_assert_eq(transition_started("j8", "grace", PROCESSING, 2, 0, 0), 1);
    cr_assert_eq(started_at("j8"), TX_AT_MS - 9000, "nor does its at_ms");
    cr_assert_eq(transition_started("j8", "grace", COMPLETED, 2, TX_AT_MS - 1000, 0), 1);
    cr_assert_eq(started_at("j8"), TX_AT_MS - 9000, "nor does the result");
}

Test(store_apply, started_at_set_by_processing_is_not_overwritten)
{
    job_request("j9", "heidi", NULL, 1, 0);
    /* A PROCESSING without started_at_ms starts at its at_ms. */
    cr_assert_eq(transition_started("j9", "heidi", PROCESSING, 1, 0, 0), 1);
    cr_assert_eq(started_at("j9"), TX_AT_MS);
    /* A duplicate PROCESSING carrying an earlier start: still the first. */
    cr_assert_eq(transition_started("j9", "heidi", PROCESSING, 1, TX_AT_MS - 500, 0), 1);
    cr_assert_eq(started_at("j9"), TX_AT_MS);
    cr_assert_eq(transition_started("j9", "heidi", FAILED, 1, TX_AT_MS - 500, 0), 1);
    cr_assert_eq(started_at("j9"), TX_AT_MS);
}

Test(store_apply, started_at_ignored_with_an_ignored_transition)
{
    /* Only an applied transition sets it: a stale result (attempt 1 after
     * the record moved to attempt 2) leaves it unset. */
    job_request("j10", "ivan", NULL, 1, 0);
    cr_assert_eq(transition_started("j10", "ivan", PENDING, 2, 0, 0), 1);
    cr_assert_eq(started_at("j10"), 0, "a PENDING without a start sets nothing");
    cr_assert_eq(transition_started("j10", "ivan", COMPLETED, 1, TX_AT_MS - 700, 0), 0);
    cr_assert_eq(started_at("j10"), 0);
}

static idem_result reserve(const char *user, const char *key, uint8_t fill, const char *id,
                           int64_t now)
{
    uint8_t hash[IDEM_HASH_LEN];
    idem_result res;
    memset(hash, fill, sizeof hash);
    begin(0);
    cr_assert_eq(idem_reserve(tdb, twb, user, key, hash, id, now, &res), KILN_OK);
    commit();
    return res;
}

Test(store_apply, idem_reserve_semantics)
{
    int64_t now = kiln_now_ms();
    idem_result r = reserve("alice", "k1", 1, "id-a", now);
    cr_assert(r.is_new);
    cr_assert_str_eq(r.id, "id-a");
    r = reserve("alice", "k1", 1, "id-b", now + 1000);
    cr_assert_not(r.is_new);
    cr_assert_not(r.conflict);
    cr_assert_str_eq(r.id, "id-a");
    r = reserve("alice", "k1", 2, "id-c", now + 1000);
    cr_assert(r.conflict);
    cr_assert_str_eq(r.id, "id-a");
    r = reserve("bob", "k1", 2, "id-d", now);
    cr_assert(r.is_new, "keys are per user");
    /* Past the TTL the key is free again. */
    r = reserve("alice", "k1", 2, "id-e", now + 2 * DAY_MS);
    cr_assert(r.is_new);
    cr_assert_str_eq(r.id, "id-e");
}

Test(store_apply, idem_from_a_nats_job_request)
{
    job_request("j5", "alice", "nk", 1, 0);
    idem_result r = reserve("alice", "nk", 7, "id-x", kiln_now_ms());
    cr_assert_not(r.is_new);
    cr_assert_str_eq(r.id, "j5");
    /* A reserved key is not taken over by a later job with the same key. */
    job_request("j6", "alice", "nk", 2, 0);
    r = reserve("alice", "nk", 7, "id-x", kiln_now_ms());
    cr_assert_str_eq(r.id, "j5");
}

Test(store_apply, compaction_drops_expired_idem_entries)
{
    uint8_t k[KEYS_IDEM_MAX];
    char *v = NULL;
    size_t vl = 0;
    reserve("alice", "old", 1, "id-old", kiln_now_ms() - 3 * DAY_MS);
    reserve("alice", "new", 1, "id-new", kiln_now_ms());
    rocksdb_compact_range_cf(tdb->db, tdb->cf[DB_CF_IDEM], NULL, 0, NULL, 0);
    size_t kl = keys_idem(k, "alice", "old");
    cr_assert_eq(db_get(tdb, NULL, NULL, DB_CF_IDEM, k, kl, &v, &vl), KILN_ENOTFOUND);
    kl = keys_idem(k, "alice", "new");
    cr_assert_eq(db_get(tdb, NULL, NULL, DB_CF_IDEM, k, kl, &v, &vl), KILN_OK);
    rocksdb_free(v);
    idem_suggest_sweep(tdb); /* must not block or fail */
}

/* Deferred counters (the apply loop's mode): a batch of many users' jobs
 * grows the counter index past its first size; the small batches after it
 * reuse it. Every user's counters must come out as with one write each. */
Test(store_apply, deferred_counters_across_a_large_then_small_batches)
{
    char id[32], user[32];
    Kiln__V1__JobRequest r;
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    begin(0);
    sink.defer_counters = 1;
    for (int i = 0; i < 300; i++) { /* 300 users, one job each, then a second for every third */
        snprintf(id, sizeof id, "big-%d", i);
        snprintf(user, sizeof user, "user-%d", i);
        req_init(&r, id, user);
        cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
        cr_assert_eq(apply_job_request(tdb, twb, NULL, buf, len, kiln_now_ms(), (uint64_t)i + 1, &sink,
                                       &changed),
                     KILN_OK);
        free(buf);
        if (i % 3 == 0) {
            snprintf(id, sizeof id, "big2-%d", i);
            req_init(&r, id, user);
            cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
            cr_assert_eq(apply_job_request(tdb, twb, NULL, buf, len, kiln_now_ms(), (uint64_t)i + 1000,
                                           &sink, &changed),
                         KILN_OK);
            free(buf);
        }
    }
    cr_assert_eq(apply_sink_flush_counters(tdb, twb, &sink), KILN_OK);
    commit();
    for (int i = 0; i < 300; i += 7)
        cr_assert_eq(counter((snprintf(user, sizeof user, "user-%d", i), user), KEYS_COUNTER_ACTIVE),
                     i % 3 == 0 ? 2u : 1u, "user-%d", i);
    /* Small batches after it: one finishes a job of user-3, one adds a job
     * for user-5 and finishes one of user-6. */
    Kiln__V1__JobRequest tr;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    t.request = &tr;
    t.state = COMPLETED;
    t.attempt = 1;
    t.at_ms = TX_AT_MS;
    for (int round = 0; round < 2; round++) {
        begin(0);
        sink.defer_counters = 1;
        req_init(&tr, round == 0 ? "big-3" : "big-6", round == 0 ? "user-3" : "user-6");
        cr_assert_eq(kiln_pb_pack(&t.base, &buf, &len), KILN_OK);
        cr_assert_eq(apply_transition(tdb, twb, buf, len, &sink, &changed), KILN_OK);
        free(buf);
        if (round == 1) {
            req_init(&r, "small-5", "user-5");
            cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
            cr_assert_eq(apply_job_request(tdb, twb, NULL, buf, len, kiln_now_ms(), 5000, &sink,
                                           &changed),
                         KILN_OK);
            free(buf);
        }
        cr_assert_eq(apply_sink_flush_counters(tdb, twb, &sink), KILN_OK);
        commit();
    }
    cr_assert_eq(counter("user-3", KEYS_COUNTER_ACTIVE), 1);
    cr_assert_eq(counter("user-3", KEYS_COUNTER_UNVIEWED), 1);
    cr_assert_eq(counter("user-6", KEYS_COUNTER_ACTIVE), 1);
    cr_assert_eq(counter("user-6", KEYS_COUNTER_UNVIEWED), 1);
    cr_assert_eq(counter("user-5", KEYS_COUNTER_ACTIVE), 2);
    cr_assert_eq(counter("user-4", KEYS_COUNTER_ACTIVE), 1, "an untouched user");
    cr_assert_eq(counter("user-4", KEYS_COUNTER_UNVIEWED), 0);
    sink.defer_counters = 0;
}

/* A JobRequest carrying a field protobuf-c accepts but cannot write back
 * (tag 0, here in a two-byte varint): the store keeps the request inside the
 * record, and the record must still read back. Found by fuzz_job_request. */
Test(store_apply, a_request_with_an_unwritable_unknown_field_still_reads_back)
{
    Kiln__V1__JobRequest r;
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    req_init(&r, "odd-field", "alice");
    cr_assert_eq(kiln_pb_pack(&r.base, &buf, &len), KILN_OK);
    static const uint8_t odd[] = {0x81, 0x00, 1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t *msg = malloc(len + sizeof odd);
    cr_assert_not_null(msg);
    memcpy(msg, buf, len);
    memcpy(msg + len, odd, sizeof odd);
    begin(0);
    kiln_status st = apply_job_request(tdb, twb, NULL, msg, len + sizeof odd, kiln_now_ms(), 5, &sink,
                                       &changed);
    commit();
    cr_assert_eq(st, KILN_OK);
    cr_assert_eq(changed, 1);
    Kiln__V1__JobRecord *rec = NULL;
    cr_assert_eq(db_load_record(tdb, NULL, NULL, "odd-field", &rec), KILN_OK,
                 "the stored record does not decode");
    cr_expect_str_eq(rec->request->prompt, "a red fox");
    kiln__v1__job_record__free_unpacked(rec, NULL);
    free(buf);
    free(msg);
}
