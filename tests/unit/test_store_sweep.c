/* test_store_sweep.c - which pending jobs the store's sweep checks for a lost
 * request: pending, with a known request sequence, and past its start time
 * (the later of not_before and retry_at). */
#include <criterion/criterion.h>

#include "../../store/sweep.h"
#include "clock.h"
#include "jobreq.h"
#include "kiln.pb-c.h"

typedef struct {
    Kiln__V1__JobRecord rec;
    Kiln__V1__JobStatus st;
    Kiln__V1__JobRequest req;
} sweep_rec;

static void rec_init(sweep_rec *r, Kiln__V1__JobState state, uint64_t seq, int64_t not_before,
                     int64_t retry_at)
{
    kiln__v1__job_record__init(&r->rec);
    kiln__v1__job_status__init(&r->st);
    kiln__v1__job_request__init(&r->req);
    r->st.state = state;
    r->req.not_before_ms = not_before;
    r->rec.status = &r->st;
    r->rec.request = &r->req;
    r->rec.request_seq = seq;
    r->rec.retry_at_ms = retry_at;
}

#define PENDING KILN__V1__JOB_STATE__JOB_STATE_PENDING

Test(sweep, due_only_when_pending_with_a_sequence_and_past_its_start)
{
    const int64_t now = 1000000;
    sweep_rec r;
    rec_init(&r, PENDING, 42, 0, 0);
    cr_expect_eq(sweep_is_due(&r.rec, now), 1, "pending, no delay");
    rec_init(&r, PENDING, 42, now, 0);
    cr_expect_eq(sweep_is_due(&r.rec, now), 1, "start time reached exactly");
    rec_init(&r, PENDING, 42, now + 1, 0);
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "delayed job not yet due");
    rec_init(&r, PENDING, 42, now - 5000, now + 1);
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "a retry waiting for its backoff is not due");
    rec_init(&r, PENDING, 42, now + 1, now - 5000);
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "the later of not_before and retry_at counts");
    rec_init(&r, PENDING, 0, 0, 0);
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "unknown request sequence: nothing to look up");
}

Test(sweep, never_due_when_not_pending_or_incomplete)
{
    const int64_t now = 1000000;
    sweep_rec r;
    static const Kiln__V1__JobState others[] = {
        KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED,
        KILN__V1__JOB_STATE__JOB_STATE_FAILED, KILN__V1__JOB_STATE__JOB_STATE_CANCELLED};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        rec_init(&r, others[i], 42, 0, 0);
        cr_expect_eq(sweep_is_due(&r.rec, now), 0, "state %d", (int)others[i]);
    }
    cr_expect_eq(sweep_is_due(NULL, now), 0);
    rec_init(&r, PENDING, 42, 0, 0);
    r.rec.status = NULL;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "record without status");
    rec_init(&r, PENDING, 42, 0, 0);
    r.rec.request = NULL;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "record without request");
}

/* A processing job is checked once it has been processing for longer than its
 * attempt can run (timeout_s plus the grace): its worker is gone too. */
Test(sweep, due_when_processing_longer_than_an_attempt_can_run)
{
    const int64_t now = 10000000;
    sweep_rec r;
    rec_init(&r, KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 42, 0, 0);
    r.req.timeout_s = 10;
    r.rec.updated_at_ms = now - 10000 - KILN_ABANDONED_GRACE_MS;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "at the limit it may still be running");
    r.rec.updated_at_ms--;
    cr_expect_eq(sweep_is_due(&r.rec, now), 1, "past its timeout and the grace");
    r.req.timeout_s = 0;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "the default timeout (300 s) is longer");
    r.rec.updated_at_ms = now - 301000 - KILN_ABANDONED_GRACE_MS;
    cr_expect_eq(sweep_is_due(&r.rec, now), 1, "past the default timeout and the grace");
    r.rec.request_seq = 0;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "unknown request sequence: nothing to look up");
    rec_init(&r, KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, 42, 0, 0);
    r.rec.updated_at_ms = 1;
    cr_expect_eq(sweep_is_due(&r.rec, now), 0, "a terminal job, however old");
}
