/* test_consumer_stall.c - unit tests for consumer/stall.c's decisions (which
 * stream sequences are certainly done, the scan window, which messages to
 * re-drive) and the Kiln-Redrive exemption of the duplicate-copy rule. */
#include <criterion/criterion.h>
#include <string.h>

#include "../../consumer/cons.h"

Test(stall, upper_bound)
{
    /* The 2.9.10 loss: delivered 19, floor 18, nothing unacked -> 19 is done with. */
    cr_assert_eq(cons_stall_upper(19, 18, 0), 19);
    /* Healthy idle durable; 2.9 can move the floor past other-subject sequences. */
    cr_assert_eq(cons_stall_upper(19, 19, 0), 19);
    cr_assert_eq(cons_stall_upper(19, 25, 0), 25);
    /* Something unacked (e.g. waiting out a nak delay): only the floor counts. */
    cr_assert_eq(cons_stall_upper(19, 18, 1), 18);
    cr_assert_eq(cons_stall_upper(40, 10, 5), 10);
    cr_assert_eq(cons_stall_upper(0, 0, 0), 0);
}

Test(stall, window)
{
    uint64_t cur = 0, from = 0, to = 0;
    cr_assert_not(cons_stall_window(0, 10, &cur, 100, &from, &to), "empty stream");
    cr_assert_not(cons_stall_window(20, 19, &cur, 100, &from, &to), "everything below the first seq");
    cr_assert(cons_stall_window(5, 9, &cur, 100, &from, &to));
    cr_assert_eq(from, 5);
    cr_assert_eq(to, 9);
    cr_assert_eq(cur, 10);
    /* Capped, then resumed where it stopped, then wrapped. */
    cur = 0;
    cr_assert(cons_stall_window(1, 10, &cur, 4, &from, &to));
    cr_assert(from == 1 && to == 4, "%llu..%llu", (unsigned long long)from, (unsigned long long)to);
    cr_assert(cons_stall_window(1, 10, &cur, 4, &from, &to));
    cr_assert(from == 5 && to == 8);
    cr_assert(cons_stall_window(1, 10, &cur, 4, &from, &to));
    cr_assert(from == 9 && to == 10);
    cr_assert(cons_stall_window(1, 10, &cur, 4, &from, &to));
    cr_assert(from == 1 && to == 4, "wraps to the first sequence");
    /* The stream's first sequence moved past the cursor. */
    cur = 3;
    cr_assert(cons_stall_window(7, 10, &cur, 4, &from, &to));
    cr_assert(from == 7 && to == 10);
}

Test(stall, should_redrive)
{
    cons_store_info si = {.answered = true, .known = true,
                          .state = KILN__V1__JOB_STATE__JOB_STATE_PENDING, .request_seq = 19};
    cr_assert(cons_stall_should_redrive(19, 0, &si), "the job's own copy, pending");
    cr_assert(cons_stall_should_redrive(30, 19, &si), "a re-drive of it, lost again");
    cr_assert_not(cons_stall_should_redrive(25, 0, &si), "a second copy of the id");
    cr_assert_not(cons_stall_should_redrive(30, 25, &si), "a re-drive of a second copy");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "may be running");
    si.abandoned = true;
    cr_assert(cons_stall_should_redrive(19, 0, &si), "processing for longer than an attempt can run");
    cr_assert_not(cons_stall_should_redrive(25, 0, &si), "abandoned, but a second copy of the id");
    si.abandoned = false;
    si.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "terminal");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_CANCELLED;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "cancelled");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    si.answered = false;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "store did not answer");
    si.answered = true;
    si.known = false;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "store does not know the job");
    si.known = true;
    si.request_seq = 0;
    cr_assert_not(cons_stall_should_redrive(19, 0, &si), "no request_seq");
}

Test(stall, redrive_exempt_from_duplicate_rule)
{
    cons_job j;
    memset(&j, 0, sizeof j);
    j.num_delivered = 1;
    j.stream_seq = 30;
    j.redrive_of = 19;
    cons_store_info si = {.answered = true, .known = true,
                          .state = KILN__V1__JOB_STATE__JOB_STATE_PENDING, .request_seq = 19};
    cr_assert_not(cons_job_is_duplicate_copy(&j, &si), "re-drive of the pending job's copy runs");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PROCESSING;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "processing: the original may be running");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_COMPLETED;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "terminal");
    si.state = KILN__V1__JOB_STATE__JOB_STATE_PENDING;
    j.redrive_of = 25;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "re-drive of another copy");
    j.redrive_of = 0;
    cr_assert(cons_job_is_duplicate_copy(&j, &si), "no header: a second copy");
}

/* The durable of the chaos run that found it: seq 5632 pending and never
 * delivered, delivered_seq 5588, fetches answered with nothing. */
static cons_stall_obs stuck_obs(int64_t at_ms, uint64_t last_seq)
{
    return (cons_stall_obs){.valid = true, .at_ms = at_ms, .delivered_stream = 5588, .delivered_consumer = 555,
                            .num_pending = 1, .num_ack_pending = 0, .max_ack_pending = 20000,
                            .last_seq = last_seq};
}

Test(stall, skipped_window)
{
    uint64_t from = 0, to = 0;
    cons_stall_obs prev = stuck_obs(1000, 6328), now = stuck_obs(11000, 6400);
    cr_assert(cons_stall_skipped_window(&prev, &now, 5000, 512, &from, &to));
    /* Above the delivered sequence, up to what was there a round ago, capped. */
    cr_assert(from == 5589 && to == 5589 + 511, "%llu..%llu", (unsigned long long)from, (unsigned long long)to);
    prev.last_seq = 5700;
    cr_assert(cons_stall_skipped_window(&prev, &now, 5000, 512, &from, &to));
    cr_assert(from == 5589 && to == 5700);

    cr_assert_not(cons_stall_skipped_window(&prev, &now, 900, 512, &from, &to),
                  "no fetch answered with nothing since the previous round");
    cr_assert_not(cons_stall_skipped_window(&prev, &now, 0, 512, &from, &to), "never fetched (paused lane)");
    cons_stall_obs moved = now;
    moved.delivered_stream = 5600;
    moved.delivered_consumer = 556;
    cr_assert_not(cons_stall_skipped_window(&prev, &moved, 5000, 512, &from, &to), "it delivered meanwhile");
    moved = now;
    moved.delivered_consumer = 556; /* a redelivery moves only the consumer sequence */
    cr_assert_not(cons_stall_skipped_window(&prev, &moved, 5000, 512, &from, &to), "it redelivered meanwhile");
    cons_stall_obs idle = now;
    idle.num_pending = 0;
    cr_assert_not(cons_stall_skipped_window(&prev, &idle, 5000, 512, &from, &to), "nothing pending now");
    cr_assert_not(cons_stall_skipped_window(&idle, &now, 5000, 512, &from, &to), "nothing pending before");
    cons_stall_obs full = now;
    full.num_ack_pending = 20000;
    cr_assert_not(cons_stall_skipped_window(&prev, &full, 5000, 512, &from, &to), "ack-pending window full");
    cons_stall_obs gap = prev;
    gap.valid = false;
    cr_assert_not(cons_stall_skipped_window(&gap, &now, 5000, 512, &from, &to), "no previous round");
    prev.last_seq = 5588;
    cr_assert_not(cons_stall_skipped_window(&prev, &now, 5000, 512, &from, &to), "nothing was above it a round ago");
    prev.last_seq = 6328;
    cr_assert_not(cons_stall_skipped_window(&prev, &now, 5000, 0, &from, &to), "no room to scan");
}

/* A message kept ack-pending by nobody is re-driven only when it is the same
 * one found before, its AckWait or nak delay is over (settle), and a fetch
 * came back empty after that. */
Test(stall, unheld_overdue)
{
    cons_stall_suspect sus = {.seq = 42, .at_ms = 10000};
    cr_assert(cons_stall_unheld_overdue(&sus, 42, 14001, 4000));
    cr_assert_not(cons_stall_unheld_overdue(&sus, 42, 14000, 4000),
                  "the last empty fetch came before the message was due again");
    cr_assert_not(cons_stall_unheld_overdue(&sus, 42, 9000, 4000), "no empty fetch since it was found");
    cr_assert_not(cons_stall_unheld_overdue(&sus, 43, 20000, 4000), "another message is the lowest now");
    cons_stall_suspect none = {0};
    cr_assert_not(cons_stall_unheld_overdue(&none, 0, 20000, 4000), "nothing found before");
}

Test(stall, gone_suspected)
{
    cons_stall_obs prev = {.valid = true, .num_ack_pending = 15, .num_redelivered = 15, .ack_floor_stream = 1710};
    cons_stall_obs now = prev;
    /* Run 2615's durable: 15 ack-pending, all redelivered, the floor still. */
    cr_assert(cons_stall_gone_suspected(&prev, &now));
    now.ack_floor_stream = 1711;
    cr_assert_not(cons_stall_gone_suspected(&prev, &now), "the floor moved: acks arrive");
    now = prev;
    now.num_redelivered = 0;
    cr_assert_not(cons_stall_gone_suspected(&prev, &now), "nothing redelivered: jobs running");
    now = prev;
    now.num_ack_pending = 0;
    cr_assert_not(cons_stall_gone_suspected(&prev, &now), "nothing ack-pending");
    now = prev;
    prev.valid = false;
    cr_assert_not(cons_stall_gone_suspected(&prev, &now), "no previous round to compare with");
}

static cons_nextseq_result nextseq_of(const char *json, uint64_t *seq)
{
    return cons_nextseq_parse(json, strlen(json), seq);
}

Test(stall, nextseq_reply)
{
    uint64_t seq = 0;
    cr_assert_eq(nextseq_of("{\"type\":\"io.nats.jetstream.api.v1.stream_msg_get_response\",\"message\":"
                            "{\"subject\":\"jobs.generate.low\",\"seq\":1738,\"data\":\"\"}}",
                            &seq),
                 CONS_NEXTSEQ_FOUND);
    cr_assert_eq(seq, 1738);
    cr_assert_eq(nextseq_of("{\"type\":\"x\",\"error\":{\"code\":404,\"err_code\":10037,"
                            "\"description\":\"no message found\"}}",
                            &seq),
                 CONS_NEXTSEQ_NONE);
    cr_assert_eq(nextseq_of("{\"error\":{\"code\":503,\"err_code\":10039,\"description\":\"jetstream not "
                            "enabled\"}}",
                            &seq),
                 CONS_NEXTSEQ_FAILED, "another error is not 'nothing there'");
    cr_assert_eq(nextseq_of("{\"message\":{\"seq\":0}}", &seq), CONS_NEXTSEQ_FAILED);
    cr_assert_eq(nextseq_of("{\"message\":{\"seq\":\"12\"}}", &seq), CONS_NEXTSEQ_FAILED);
    cr_assert_eq(nextseq_of("not json", &seq), CONS_NEXTSEQ_FAILED);
    cr_assert_eq(seq, 1738, "a failed parse leaves *seq alone");
}
