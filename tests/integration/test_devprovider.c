/* test_devprovider.c - the dev provider's server over real HTTP: requests
 * that wait (!sleep, !hang) hold none of its few server threads, a client
 * that leaves a waiting request is noticed, the process stops cleanly
 * with a request still hanging, and a prompt requested again while it still
 * runs is counted as overlapping. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "../harness.h"

TestSuite(devprovider, .fini = h_fini, .timeout = 90);

#define DP_SLEEPERS 8       /* more than the server's thread pool */
#define DP_SLEEP_MS 3000

static size_t dp_discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

/* A POST /v1/images/generations of prompt, not yet started. */
static CURL *dp_request(const h_stack *s, const char *prompt, struct curl_slist *hdrs,
                        char *body, size_t body_len, long timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "%s/v1/images/generations", s->dev_url);
    snprintf(body, body_len, "{\"prompt\":\"%s\",\"response_format\":\"b64_json\"}", prompt);
    CURL *e = curl_easy_init();
    cr_assert_not_null(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, dp_discard);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    return e;
}

static long dp_status(CURL *e)
{
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    return code;
}

Test(devprovider, waits_hold_no_server_thread_and_see_clients_leave)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);

    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    cr_assert_not_null(hdrs);
    char bodies[DP_SLEEPERS + 1][160];
    CURL *sleepers[DP_SLEEPERS];
    CURLM *m = curl_multi_init();
    cr_assert_not_null(m);
    char prompt[64];
    for (int i = 0; i < DP_SLEEPERS; i++) {
        snprintf(prompt, sizeof prompt, "!sleep=%d slow fox %d", DP_SLEEP_MS, i);
        sleepers[i] = dp_request(&s, prompt, hdrs, bodies[i], sizeof bodies[i], 30000);
        curl_multi_add_handle(m, sleepers[i]);
    }
    /* One hanging request stays open through the shutdown at the end. */
    CURL *hang = dp_request(&s, "!hang kept open", hdrs, bodies[DP_SLEEPERS],
                            sizeof bodies[DP_SLEEPERS], 60000);
    curl_multi_add_handle(m, hang);
    int64_t t0 = h_now_ms();
    int running = 0;
    /* Every sleeper and the hang are at the server, each suspended. */
    const char *waiting = "kiln_devprovider_requests_waiting";
    while (h_metric(&s, H_DEVPROVIDER, waiting) < DP_SLEEPERS + 1 && h_now_ms() - t0 < 5000) {
        curl_multi_perform(m, &running); /* sends the requests */
        curl_multi_poll(m, NULL, 0, 20, NULL);
    }
    cr_assert_geq(h_metric(&s, H_DEVPROVIDER, waiting), DP_SLEEPERS + 1,
                  "the sleepers and the !hang never all waited at the dev provider");

    /* While DP_SLEEPERS requests wait, an immediate one is answered at once. */
    char url[128];
    snprintf(url, sizeof url, "%s/v1/images/generations", s.dev_url);
    static const char quick[] = "{\"prompt\":\"quick fox\"}";
    h_resp r;
    int64_t t_quick = h_now_ms();
    long st = h_http_timeout(&r, "POST", url, NULL, "application/json", quick, sizeof quick - 1,
                             NULL, 10000);
    int64_t quick_ms = h_now_ms() - t_quick;
    h_resp_free(&r);
    cr_assert_eq(st, 200, "immediate request answered %ld", st);
    cr_expect_lt(quick_ms, 1000, "immediate request took %lld ms behind waiting ones",
                 (long long)quick_ms);

    /* A client that gives up on a hanging request is noticed. */
    const char *aborts = "kiln_devprovider_requests_aborted_total";
    double aborted0 = h_metric(&s, H_DEVPROVIDER, aborts);
    cr_assert_geq(aborted0, 0, "no %s on the dev provider's /metrics", aborts);
    static const char leaving[] = "{\"prompt\":\"!hang leave me\"}";
    h_resp gone;
    long gst = h_http_timeout(&gone, "POST", url, NULL, "application/json", leaving,
                              sizeof leaving - 1, NULL, 300);
    h_resp_free(&gone);
    cr_assert_eq(gst, 0, "a !hang request was answered (%ld)", gst);
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, aborts, aborted0, 3000),
              "the dev provider did not notice the client leave");

    /* The sleepers are answered 200 after their delay. */
    int done = 0;
    while (done < DP_SLEEPERS && h_now_ms() - t0 < 20000) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left_q;
        while ((msg = curl_multi_info_read(m, &left_q)) != NULL) {
            if (msg->msg != CURLMSG_DONE) continue;
            cr_assert_neq((void *)msg->easy_handle, (void *)hang, "the !hang request ended");
            cr_assert_eq(msg->data.result, CURLE_OK, "sleeper failed: %s",
                         curl_easy_strerror(msg->data.result));
            cr_assert_eq(dp_status(msg->easy_handle), 200);
            cr_assert_geq(h_now_ms() - t0, DP_SLEEP_MS - 100, "a sleeper answered early");
            done++;
        }
        if (done < DP_SLEEPERS) curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    cr_assert_eq(done, DP_SLEEPERS, "%d of %d sleepers answered", done, DP_SLEEPERS);

    /* SIGTERM with the !hang request still open: a clean, prompt exit. */
    int64_t t_stop = h_now_ms();
    cr_assert_eq(h_proc_term(&s, H_DEVPROVIDER), 0, "dev provider did not exit 0");
    cr_expect_lt(h_now_ms() - t_stop, 3000, "stopping took %lld ms",
                 (long long)(h_now_ms() - t_stop));
    for (int i = 0; i < DP_SLEEPERS; i++) {
        curl_multi_remove_handle(m, sleepers[i]);
        curl_easy_cleanup(sleepers[i]);
    }
    curl_multi_remove_handle(m, hang);
    curl_easy_cleanup(hang);
    curl_multi_cleanup(m);
    curl_slist_free_all(hdrs);
    h_stop(&s);
}

/* The chaos test's check that no job runs twice at once rests on this: a
 * second request of a prompt with directives while the first still runs is
 * counted and logged, and one after the first ended, or after its client
 * left, is not. */
Test(devprovider, a_prompt_requested_again_while_it_runs_is_counted_as_overlapping)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    const char *overlapping = "kiln_devprovider_requests_overlapping_total";
    const char *waiting = "kiln_devprovider_requests_waiting";
    const char *aborts = "kiln_devprovider_requests_aborted_total";
    cr_assert_eq(h_metric(&s, H_DEVPROVIDER, overlapping), 0, "no %s at start", overlapping);

    char url[128];
    snprintf(url, sizeof url, "%s/v1/images/generations", s.dev_url);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    cr_assert_not_null(hdrs);
    char body[160];
    CURLM *m = curl_multi_init();
    cr_assert_not_null(m);
    CURL *first = dp_request(&s, "!sleep=1500 twice", hdrs, body, sizeof body, 30000);
    cr_assert_eq(curl_multi_add_handle(m, first), CURLM_OK);
    int running = 1;
    int64_t t0 = h_now_ms();
    while (h_metric(&s, H_DEVPROVIDER, waiting) < 1 && h_now_ms() - t0 < 5000) {
        curl_multi_perform(m, &running);
        curl_multi_poll(m, NULL, 0, 20, NULL);
    }
    cr_assert_geq(h_metric(&s, H_DEVPROVIDER, waiting), 1, "the first request never reached the server");

    /* The same prompt while the first waits: counted, and logged. */
    static const char twice[] = "{\"prompt\":\"!sleep=1500 twice\"}";
    h_resp r;
    long st = h_http_timeout(&r, "POST", url, NULL, "application/json", twice, sizeof twice - 1, NULL, 10000);
    h_resp_free(&r);
    cr_assert_eq(st, 200);
    cr_assert_eq(h_metric(&s, H_DEVPROVIDER, overlapping), 1);
    cr_assert(h_log_contains(&s, H_DEVPROVIDER, "overlapping request attempt=2 running=1"));
    while (running > 0 && h_now_ms() - t0 < 10000) {
        curl_multi_perform(m, &running);
        if (running > 0) curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    cr_assert_eq(running, 0, "the first request never ended");
    cr_assert_eq(dp_status(first), 200);

    /* Both ended: the same prompt again is not overlapping. */
    static const char again[] = "{\"prompt\":\"!sleep=1500 twice\"}";
    st = h_http_timeout(&r, "POST", url, NULL, "application/json", again, sizeof again - 1, NULL, 10000);
    h_resp_free(&r);
    cr_assert_eq(st, 200);
    /* A client that leaves ends its request too (as a consumer killed mid-call). */
    double aborted0 = h_metric(&s, H_DEVPROVIDER, aborts);
    static const char left[] = "{\"prompt\":\"!sleep=5000 left\"}";
    st = h_http_timeout(&r, "POST", url, NULL, "application/json", left, sizeof left - 1, NULL, 300);
    h_resp_free(&r);
    cr_assert_eq(st, 0, "a 5 s request was answered within 300 ms (%ld)", st);
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, aborts, aborted0, 3000),
              "the dev provider did not notice the client leave");
    st = h_http_timeout(&r, "POST", url, NULL, "application/json", left, sizeof left - 1, NULL, 300);
    h_resp_free(&r);
    cr_assert_eq(h_metric(&s, H_DEVPROVIDER, overlapping), 1, "a request after the first ended overlapped");

    curl_multi_remove_handle(m, first);
    curl_easy_cleanup(first);
    curl_multi_cleanup(m);
    curl_slist_free_all(hdrs);
    h_stop(&s);
}
