/* test_delay.c - delivery semantics, delayed jobs: delay_ms holds a job
 * pending without using an attempt or a worker slot, and it starts on time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(delay, .fini = h_fini, .timeout = 120);

Test(delay, starts_on_time_without_holding_a_slot)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};
    h_start(&s, &o);

    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"delayed badger\",\"delay_ms\":2000}", id), 202);
    int64_t t0 = h_now_ms();

    /* With the only slot free, an ordinary job runs at once. */
    char quick[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "quick badger", quick), 202);
    json_t *q = h_wait_job(&s, H_TOKEN_ALICE, quick, "completed", 10000);
    int64_t qtook = h_now_ms() - t0;
    cr_expect_str_eq(h_jstr(q, "status"), "completed", "job behind a delayed one did not complete");
    cr_expect(qtook < 1800, "consumer: delayed job held the only worker slot (quick job took %lld ms)",
              (long long)qtook);
    json_decref(q);

    /* Still waiting: pending, no attempt used. */
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    char *d = h_job_dump(j);
    if (h_now_ms() - t0 < 1800) {
        cr_expect_str_eq(h_jstr(j, "status"), "pending", "delayed job before its time: %s", d);
        cr_expect_eq(h_jint(j, "attempts"), 0, "consumer: delay used an attempt: %s", d);
        cr_expect(h_jnull(j, "started_at"), "delayed job started early: %s", d);
    }
    free(d);
    json_decref(j);

    j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 20000);
    d = h_job_dump(j);
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "delayed job: %s", d);
    cr_expect_eq(h_jint(j, "attempts"), 1, "%s", d);
    int64_t created = h_job_ms(j, "created_at"), started = h_job_ms(j, "started_at");
    cr_expect(created > 0 && started > 0, "timestamps: %s", d);
    cr_expect(started - created >= 2000, "consumer: delayed job started %lld ms after creation (delay 2000): %s",
              (long long)(started - created), d);
    cr_expect(started - created <= 3000, "delayed job started %lld ms after creation (want within 1 s of 2000): %s",
              (long long)(started - created), d);
    free(d);
    json_decref(j);
    h_stop(&s);
}

Test(delay, many_delayed_do_not_block_others)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", NULL}};
    h_start(&s, &o);
    enum { N = 8 };
    char ids[N][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"far badger %d\",\"delay_ms\":60000}", N, ids);
    char quick[65];
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "undelayed badger", quick), 202);
    h_expect_job(&s, H_TOKEN_ALICE, quick, "completed", 1, 10000, "job behind 8 delayed jobs");
    cr_expect(h_now_ms() - t0 < 3000, "consumer: job behind delayed ones took %lld ms", (long long)(h_now_ms() - t0));
    json_t *j;
    for (int i = 0; i < N; i++) {
        j = h_get_job(&s, H_TOKEN_ALICE, ids[i], NULL);
        cr_expect_str_eq(h_jstr(j, "status"), "pending");
        cr_expect_eq(h_jint(j, "attempts"), 0);
        json_decref(j);
    }
    h_stop(&s);
}

/* A delayed job on the high or low lane starts when it is due, like one on
 * the normal lane: the consumer polls a lane when a message it handed back
 * with a delay is due again. Before, those lanes were re-polled only when
 * their 100 ms pause after an empty poll ended (up to 100 ms late). The
 * delay is not a multiple of that pause or of the 50 ms idle poll: with 400
 * ms, the pause's own rhythm met the due time ~12 ms late, too close to the
 * bound to tell a broken due poll from a loaded machine. */
Test(delay, hinted_lanes_start_when_due)
{
    h_stack s;
    h_start(&s, NULL);
    static const char *lanes[] = {"high", "low"};
    enum { N = 3, DELAY_MS = 430, LATE_MAX_MS = 15 };
    for (size_t l = 0; l < sizeof lanes / sizeof lanes[0]; l++) {
        int64_t late[N];
        for (int i = 0; i < N; i++) {
            char body[160], id[65];
            snprintf(body, sizeof body, "{\"prompt\":\"due %s otter %d\",\"priority\":\"%s\",\"delay_ms\":%d}",
                     lanes[l], i, lanes[l], DELAY_MS);
            cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, id), 202);
            json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 20000);
            cr_assert_str_eq(h_jstr(j, "status"), "completed", "%s job %s", lanes[l], id);
            late[i] = h_job_ms(j, "started_at") - h_job_ms(j, "created_at") - DELAY_MS;
            json_decref(j);
            cr_expect_geq(late[i], 0, "%s job started %lld ms before it was due", lanes[l], (long long)-late[i]);
        }
        int64_t median = h_median(late, N);
        cr_expect_lt(median, LATE_MAX_MS, "%s delayed jobs started %lld ms (median; %lld, %lld, %lld) after they were due",
                     lanes[l], (long long)median, (long long)late[0], (long long)late[1], (long long)late[2]);
    }
    h_stop(&s);
}
