/* test_delay.c - delivery semantics, delayed jobs: delay_ms holds a job
 * pending without using an attempt or a worker slot, and it starts on time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(delay, .fini = h_fini, .timeout = 120);

/* RFC 3339 UTC with milliseconds to unix ms, -1 if not. */
static int64_t delay_ts_ms(const char *t)
{
    if (t == NULL) return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (sscanf(t, "%d-%d-%dT%d:%d:%d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

Test(delay, starts_on_time_without_holding_a_slot)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=1", NULL}};
    cr_assert_eq(h_stack_start(&s, &o), 0, "stack did not start");

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
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    if (h_now_ms() - t0 < 1800) {
        cr_expect_str_eq(h_jstr(j, "status"), "pending", "delayed job before its time: %s", d);
        cr_expect_eq(h_jint(j, "attempts"), 0, "consumer: delay used an attempt: %s", d);
        json_t *sa = json_object_get(j, "started_at");
        cr_expect(sa == NULL || json_is_null(sa), "delayed job started early: %s", d);
    }
    free(d);
    json_decref(j);

    j = h_wait_job(&s, H_TOKEN_ALICE, id, "completed", 20000);
    d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "delayed job: %s", d);
    cr_expect_eq(h_jint(j, "attempts"), 1, "%s", d);
    int64_t created = delay_ts_ms(h_jstr(j, "created_at")), started = delay_ts_ms(h_jstr(j, "started_at"));
    cr_expect(created > 0 && started > 0, "timestamps: %s", d);
    cr_expect(started - created >= 2000, "consumer: delayed job started %lld ms after creation (delay 2000): %s",
              (long long)(started - created), d);
    cr_expect(started - created <= 3000, "delayed job started %lld ms after creation (want within 1 s of 2000): %s",
              (long long)(started - created), d);
    free(d);
    json_decref(j);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(delay, many_delayed_do_not_block_others)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", NULL}};
    cr_assert_eq(h_stack_start(&s, &o), 0, "stack did not start");
    enum { N = 8 };
    char ids[N][65];
    for (int i = 0; i < N; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"prompt\":\"far badger %d\",\"delay_ms\":60000}", i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, ids[i]), 202);
    }
    char quick[65];
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "undelayed badger", quick), 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, quick, "completed", 10000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "job behind 8 delayed jobs");
    cr_expect(h_now_ms() - t0 < 3000, "consumer: job behind delayed ones took %lld ms", (long long)(h_now_ms() - t0));
    json_decref(j);
    for (int i = 0; i < N; i++) {
        j = h_get_job(&s, H_TOKEN_ALICE, ids[i], NULL);
        cr_expect_str_eq(h_jstr(j, "status"), "pending");
        cr_expect_eq(h_jint(j, "attempts"), 0);
        json_decref(j);
    }
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}
