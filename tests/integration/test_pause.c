/* test_pause.c - `kiln pause` / `kiln resume`: a paused lane's jobs are
 * accepted and wait (through a consumer restart), other lanes run, and the
 * jobs run once the lane is resumed. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness.h"

TestSuite(pause, .fini = h_fini, .timeout = 150);

#define PAUSE_NORMAL_METRIC "kiln_consumer_lane_paused{lane=\"normal\"}"

/* Runs `kiln <verb> <lane> [extra]` and checks its exit code and output. */
static void pause_cli(h_stack *s, const char *verb, const char *lane, const char *extra,
                      int want_rc, const char *want_out) {
    char *out = NULL;
    char *argv[6] = {"kiln", (char *)verb, (char *)lane, NULL, NULL, NULL};
    if (extra != NULL) {
        argv[3] = "--reason";
        argv[4] = (char *)extra;
    }
    int rc = h_run_cli(s, argv, &out, 30000);
    cr_assert_eq(rc, want_rc, "kiln %s %s exited %d: %s", verb, lane, rc, out);
    if (want_out != NULL)
        cr_assert(strstr(out, want_out) != NULL, "kiln %s %s printed: %s", verb, lane, out);
    free(out);
}

/* `kiln stats --json`: whether the normal lane shows as paused, and its
 * jobs waiting or held (one a consumer fetched as the pause came is handed
 * back: held until it is delivered again). */
static void pause_stats(h_stack *s, int *paused, long long *queued) {
    json_t *o = h_kiln_stats(s);
    json_t *normal = json_object_get(json_object_get(o, "lanes"), "normal");
    *paused = json_is_true(json_object_get(normal, "paused"));
    *queued = h_jint(normal, "waiting") + h_jint(normal, "held");
    json_decref(o);
}

static void pause_expect_pending(h_stack *s, char ids[][65], int n, int64_t window_ms,
                                 const char *when) {
    char why[512];
    for (int i = 0; i < n; i++)
        cr_assert(h_job_stays(s, H_TOKEN_ALICE, ids[i], "pending", i == 0 ? window_ms : 0, why,
                              sizeof why),
                  "%s: a job of the paused lane left pending: %s", when, why);
}

Test(pause, a_paused_lane_waits_and_resumes) {
    h_stack s;
    h_stack_opts o = {.env = {"KILN_QUEUE_STATS_INTERVAL=200ms", NULL}};
    h_start(&s, &o);

    pause_cli(&s, "pause", "bogus", NULL, 2, NULL);
    pause_cli(&s, "pause", "normal", "provider outage", 0, "lane=normal status=paused");
    cr_assert(h_wait_metric_eq(&s, H_CONSUMER, PAUSE_NORMAL_METRIC, 1, 10000),
              "the consumer never saw the pause");

    char normal[3][65], high[1][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"paused heron %d\"}", 3, normal);
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"unpaused kite %d\",\"priority\":\"high\"}", 1,
                  high);
    h_expect_job(&s, H_TOKEN_ALICE, high[0], "completed", 1, 30000, "the high job");
    pause_expect_pending(&s, normal, 3, 1500, "paused");
    int paused = 0;
    long long queued = 0;
    pause_stats(&s, &paused, &queued);
    cr_expect(paused, "kiln stats does not show the normal lane paused");
    cr_expect(h_wait_metric_eq(&s, H_STORE, "kiln_queue_paused{lane=\"normal\"}", 1, 10000),
              "the store's gauge does not show the lane paused");
    cr_expect_eq(queued, 3, "kiln stats shows %lld normal jobs waiting or held", queued);

    /* The pause is kept in NATS: a restarted consumer does not fetch either. */
    cr_assert_eq(h_proc_restart(&s, H_CONSUMER), 0, "the consumer did not restart");
    pause_expect_pending(&s, normal, 3, 1500, "after a consumer restart");

    pause_cli(&s, "resume", "normal", NULL, 0, "lane=normal status=resumed");
    for (int i = 0; i < 3; i++)
        h_expect_job(&s, H_TOKEN_ALICE, normal[i], "completed", 1, 30000, "a resumed job");
    cr_expect(h_wait_metric_eq(&s, H_CONSUMER, PAUSE_NORMAL_METRIC, 0, 10000),
              "the consumer's gauge still shows the lane paused");
    pause_stats(&s, &paused, &queued);
    cr_expect(!paused, "kiln stats still shows the normal lane paused");
    h_stop(&s);
}
