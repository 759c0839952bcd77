/* test_gate.c - the consumer's provider gate (consumer/gate.c) against the
 * real stack: a 429 pauses every new call for its Retry-After, a provider
 * outage trips the breaker so queued jobs spend no attempts on it, and
 * KILN_PROVIDER_RATE spaces the calls. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(gate, .fini = h_fini, .timeout = 120);

/* Fast backoff: a retry without Retry-After waits random(0, 100 ms), and
 * the breaker's cool-down is at most 1 s. */
#define GATE_FAST_RETRY "KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=1s"

static int64_t gate_started_ms(h_stack *s, const char *id, const char *what) {
    json_t *j = h_wait_job(s, H_TOKEN_ALICE, id, "completed", 20000);
    char *d = h_job_dump(j);
    cr_assert_str_eq(h_jstr(j, "status"), "completed", "%s: %s", what, d);
    int64_t t = h_job_ms(j, "started_at");
    cr_assert(t > 0, "%s without started_at: %s", what, d);
    free(d);
    json_decref(j);
    return t;
}

/* Submits n (<= 8) jobs with prompt_fmt (one %d) and returns how far apart
 * the first and the last call started (ms), once all completed. */
static int64_t gate_start_spread(h_stack *s, const char *prompt_fmt, int n) {
    char body[128], ids[8][65];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\"}", prompt_fmt);
    cr_assert(n <= 8);
    h_submit_each(s, H_TOKEN_ALICE, body, n, ids);
    int64_t first = INT64_MAX, last = 0;
    for (int k = 0; k < n; k++) {
        int64_t t = gate_started_ms(s, ids[k], prompt_fmt);
        if (t < first) first = t;
        if (t > last) last = t;
    }
    return last - first;
}

Test(gate, a_429_pauses_every_new_call_for_its_retry_after) {
    h_stack s;
    const h_stack_opts opts = {.env = {GATE_FAST_RETRY, NULL}};
    h_start(&s, &opts);
    char a[65], b[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!ratelimit=1 gate owl", a), 202);
    cr_assert(h_wait_metric_above(&s, H_CONSUMER, "kiln_consumer_provider_rate_limit_pauses_total",
                                  0, 10000),
              "consumer: a 429 did not pause new calls");
    int64_t seen = h_now_ms();
    double waiting = h_metric(&s, H_CONSUMER, "kiln_consumer_provider_waiting");
    cr_expect(waiting == 1 || h_now_ms() - seen > 900,
              "kiln_consumer_provider_waiting is %g during the pause", waiting);
    /* Submitted during the pause: the provider said to wait, so B waits too
     * (without the gate it would start at once and could only get a 429). */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "gate wren", b), 202);
    int64_t a_start = gate_started_ms(&s, a, "the rate-limited job");
    int64_t b_start = gate_started_ms(&s, b, "the job submitted during the pause");
    cr_expect(b_start - a_start >= 900,
              "a job submitted during a 429's Retry-After: 1 started %lld ms after the 429'd call",
              (long long)(b_start - a_start));
    h_expect_job(&s, H_TOKEN_ALICE, b, "completed", 1, 5000, "the job submitted during the pause");
    h_expect_job(&s, H_TOKEN_ALICE, a, "completed", 2, 5000, "the rate-limited job");
    cr_expect(h_wait_metric_eq(&s, H_CONSUMER, "kiln_consumer_provider_waiting", 0, 5000),
              "kiln_consumer_provider_waiting stayed 1 after the pause");
    cr_expect(h_log_contains(&s, H_CONSUMER, "provider calls resume"));
    h_stop(&s);
}

typedef struct {
    h_stack *s;
    const char *needle;
    int n;
} gate_log_arg;

static int gate_log_reached(void *arg) {
    gate_log_arg *a = arg;
    return h_log_count(a->s, H_CONSUMER, a->needle) >= a->n;
}

/* Each of the n jobs queued during an outage completed, and every attempt
 * but its last was a probe logged by the stack's consumer or by the
 * consumer logging to log2 (NULL: none). */
static void gate_expect_only_probes_spent(h_stack *s, const char *log2, char ids[][65], int n) {
    for (int k = 0; k < n; k++) {
        json_t *j = h_wait_job(s, H_TOKEN_ALICE, ids[k], "completed", 30000);
        char *d = h_job_dump(j);
        cr_expect_str_eq(h_jstr(j, "status"), "completed",
                         "a job queued during the outage did not complete: %s", d);
        char probe_line[512];
        snprintf(probe_line, sizeof probe_line, "trying one call job=%s", ids[k]);
        int probes = h_log_count(s, H_CONSUMER, probe_line) +
                     (log2 != NULL ? h_file_log_count(log2, probe_line) : 0);
        cr_expect(h_jint(j, "attempts") - 1 <= probes,
                  "a job queued during the outage spent attempts on it beyond its %d probes: %s",
                  probes, d);
        free(d);
        json_decref(j);
    }
}

Test(gate, an_outage_trips_the_breaker_and_queued_jobs_spend_no_attempts) {
    h_stack s;
    const h_stack_opts opts = {.env = {GATE_FAST_RETRY, "KILN_PROVIDER_TRIP_AFTER=2", NULL}};
    h_start(&s, &opts);
    cr_assert_eq(h_proc_term(&s, H_DEVPROVIDER), 0, "dev provider did not stop cleanly");
    /* The harness holds its port meanwhile: another test's server took it
     * once (--jobs 2), and the consumer's probe got a 405 from it. */
    cr_assert_neq(s.procs[H_DEVPROVIDER].port_hold, 0, "the dev provider's port %d is not held",
                  s.dev_port);

    /* Two jobs find the provider gone and trip the breaker. */
    char trig[2][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"gate trigger %d\",\"max_attempts\":10}", 2,
                  trig);
    cr_assert(h_wait_metric_eq(&s, H_CONSUMER, "kiln_consumer_provider_breaker_tripped", 1, 10000),
              "consumer: two unreachable calls in a row did not trip the breaker");

    /* Jobs queued during the outage. With calls going out, each would
     * spend an attempt every ~100-1000 ms (the backoff) until the provider
     * is back; with the breaker only a probe spends one. */
    enum { LATER = 5 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"gate queued %d\",\"max_attempts\":10}", LATER,
                  later);
    json_t *o = h_kiln_stats(&s);
    json_t *list = json_object_get(o, "consumers");
    cr_assert_eq(json_array_size(list), 1, "kiln stats during the outage lists %zu consumers",
                 json_array_size(list));
    const char *provider = h_jstr(json_array_get(list, 0), "provider");
    cr_expect(provider != NULL && strcmp(provider, "tripped") == 0,
              "kiln stats during the outage: provider=%s", provider != NULL ? provider : "(none)");
    json_decref(o);
    gate_log_arg two_failed = {&s, "provider still unavailable", 2};
    cr_assert(h_wait_for(gate_log_reached, &two_failed, 15000, 50),
              "consumer: two probes of the tripped breaker did not fail");
    cr_assert_eq(h_proc_start(&s, H_DEVPROVIDER), 0, "dev provider did not start again");

    gate_expect_only_probes_spent(&s, NULL, later, LATER);
    for (int k = 0; k < 2; k++)
        h_expect_job(&s, H_TOKEN_ALICE, trig[k], "completed", -1, 20000, "trigger");
    /* One probe at a time: each one out ended in a "still unavailable"
     * line, except the one that found the provider back. */
    int probes = h_log_count(&s, H_CONSUMER, "trying one call job=");
    int failed = h_log_count(&s, H_CONSUMER, "provider still unavailable");
    cr_expect(probes <= failed + 1, "%d probes went out for %d failed ones", probes, failed);
    cr_expect(h_wait_metric_eq(&s, H_CONSUMER, "kiln_consumer_provider_breaker_tripped", 0, 5000));
    cr_expect(h_log_contains(&s, H_CONSUMER, "provider breaker closed"));
    h_stop(&s);
}

Test(gate, the_provider_rate_spaces_calls) {
    h_stack s;
    const h_stack_opts opts = {.env = {"KILN_PROVIDER_RATE=5/s", NULL}};
    h_start(&s, &opts);
    /* Burst 1 at 5/s: six starts take at least five intervals of 200 ms. */
    int64_t spread = gate_start_spread(&s, "gate paced %d", 6);
    cr_expect(spread >= 950, "6 calls at 5/s started within %lld ms", (long long)spread);
    h_stop(&s);
}

/* A loopback port that takes no connection: a listener with a backlog of
 * 0 that never accepts, its one queue place filled, so the kernel drops
 * every further SYN (a provider host behind a firewall that drops). fds[0]
 * is the listener, fds[1] the filler; returns the port. */
static int gate_blackhole(int fds[2]) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fds[0] >= 0);
    cr_assert_eq(bind(fds[0], (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(fds[0], 0), 0);
    cr_assert_eq(getsockname(fds[0], (struct sockaddr *)&a, &alen), 0);
    fds[1] = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fds[1] >= 0);
    cr_assert_eq(connect(fds[1], (struct sockaddr *)&a, sizeof a), 0, "filler connect");
    return ntohs(a.sin_port);
}

Test(gate, a_provider_that_takes_no_connection_is_unavailable_not_a_timeout) {
    int fds[2];
    int port = gate_blackhole(fds);
    char url[96];
    snprintf(url, sizeof url, "KILN_PROVIDER_URL=http://127.0.0.1:%d/v1", port);
    h_stack s;
    const h_stack_opts opts = {.consumer_env = {url, NULL}};
    h_start(&s, &opts);
    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE,
                          "{\"prompt\":\"gate blackhole\",\"timeout_s\":1,\"max_attempts\":1}", id),
                 202);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 20000);
    char *d = h_job_dump(j);
    cr_expect_str_eq(h_jstr(j, "status"), "failed", "%s", d);
    /* Counted toward the breaker, unlike a call that ran out of its own time. */
    cr_expect_str_eq(h_jstr(json_object_get(j, "error"), "code"), "provider_unavailable",
                     "a connect that never completed should be provider_unavailable: %s", d);
    free(d);
    json_decref(j);
    h_stop(&s);
    close(fds[1]);
    close(fds[0]);
}

/* Offset of the first line of path holding needle; -1 when none. */
static long gate_log_offset(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    char line[4096];
    long at = -1, off = 0;
    while (at < 0 && fgets(line, sizeof line, f) != NULL) {
        if (strstr(line, needle) != NULL) at = off;
        off += (long)strlen(line);
    }
    fclose(f);
    return at;
}

/* Consumers listed by `kiln stats` with their rate_per_s, and how many of them have want. */
static int gate_rates(h_stack *s, double want, size_t *listed) {
    json_t *o = h_kiln_stats(s);
    json_t *list = json_object_get(o, "consumers");
    int n = 0;
    *listed = json_array_size(list);
    for (size_t k = 0; k < *listed; k++)
        n += json_real_value(json_object_get(json_array_get(list, k), "provider_rate_per_s")) ==
             want;
    json_decref(o);
    return n;
}

Test(gate, consumers_share_the_provider_rate) {
    h_stack s;
    const h_stack_opts opts = {.env = {"KILN_PROVIDER_RATE=4/s", NULL}};
    h_start(&s, &opts);
    /* A second consumer with the same settings (and no metrics listener),
     * and a third without a rate: it is no part of the rate group. */
    const char *const second_env[] = {"KILN_METRICS_ADDR=", NULL};
    const char *const third_env[] = {"KILN_METRICS_ADDR=", "KILN_PROVIDER_RATE=0", NULL};
    pid_t second = h_spawn_another(&s, H_CONSUMER, second_env, "consumer2");
    pid_t third = h_spawn_another(&s, H_CONSUMER, third_env, "consumer3");
    cr_assert(second > 0 && third > 0, "more consumers did not start");

    /* Both of the group see two consumers of 16 slots each and take 2/s of the 4/s. */
    int64_t t0 = h_now_ms();
    size_t listed = 0;
    int halves = 0;
    while (halves != 2 && h_now_ms() - t0 < 15000)
        halves = gate_rates(&s, 2.0, &listed);
    cr_assert_eq(halves, 2, "two consumers did not each report a rate of 2/s (a half of 4/s)");
    cr_expect_eq(listed, 3);
    cr_expect(h_log_contains(&s, H_CONSUMER, "provider rate share rate_per_s=2 "));
    /* The second took its share before it fetched anything. */
    char log2[PATH_MAX];
    snprintf(log2, sizeof log2, "%s/consumer2.log", s.log_dir);
    long share_at = gate_log_offset(log2, "provider rate share rate_per_s=2 ");
    long ready_at = gate_log_offset(log2, "consumer ready");
    cr_expect(share_at >= 0 && ready_at >= 0 && share_at < ready_at,
              "the second consumer did not take its share before it was ready (%ld, %ld)", share_at,
              ready_at);
    cr_assert_eq(h_term_pid(third), 0, "third consumer did not stop cleanly");

    /* Together they start calls at 4/s: six take at least a second. */
    int64_t spread = gate_start_spread(&s, "gate shared %d", 6);
    cr_expect(spread >= 900, "6 calls at 2 x 2/s started within %lld ms", (long long)spread);

    /* When one stops, the other takes the whole rate again. */
    cr_assert_eq(h_term_pid(second), 0, "second consumer did not stop cleanly");
    t0 = h_now_ms();
    int whole = 0;
    while (!(whole == 1 && listed == 1) && h_now_ms() - t0 < 15000)
        whole = gate_rates(&s, 4.0, &listed);
    cr_expect(whole == 1 && listed == 1, "the remaining consumer did not take the whole 4/s back");
    h_stop(&s);
}

/* ---- news among consumers (consumer/gatenews.c) ---- */

/* A stack whose consumers trip after trip_after unavailable calls (cool-down
 * up to cap, a KILN_RETRY_CAP entry), with the dev provider stopped. */
static void gate_start_outage(h_stack *s, const char *trip_after, const char *cap) {
    const h_stack_opts opts = {.env = {"KILN_RETRY_BASE=100ms", cap, trip_after, NULL}};
    h_start(s, &opts);
    cr_assert_eq(h_proc_term(s, H_DEVPROVIDER), 0, "dev provider did not stop cleanly");
}

/* Starts a second consumer (env entries replacing the stack's) and waits
 * until it is ready; its log path into log_path. */
static pid_t gate_second_consumer(h_stack *s, const char *const *env, char log_path[PATH_MAX]) {
    pid_t pid = h_spawn_another(s, H_CONSUMER, env, "consumer2");
    cr_assert(pid > 0, "the second consumer did not start");
    snprintf(log_path, PATH_MAX, "%s/consumer2.log", s->log_dir);
    cr_assert(h_wait_file_log(log_path, "consumer ready", 15000), "the second consumer was not ready");
    return pid;
}

typedef struct {
    h_stack *s;
    const char *log2;
    const char *needle;
} gate_either_arg;

/* h_wait_for: either consumer logged needle. */
static int gate_either_logged(void *arg) {
    const gate_either_arg *a = arg;
    return h_log_contains(a->s, H_CONSUMER, a->needle) || h_file_log_count(a->log2, a->needle) > 0;
}

/* The pause (ms) in the first "429) at another consumer" line of the log at
 * path, -1 when there is none. */
static long gate_heard_pause_ms(const char *path) {
    FILE *f = fopen(path, "r");
    char line[1024];
    long ms = -1;
    while (f != NULL && ms < 0 && fgets(line, sizeof line, f) != NULL) {
        const char *at = strstr(line, "429) at another consumer, no new calls for ms=");
        if (at != NULL) ms = strtol(strchr(at, '=') + 1, NULL, 10);
    }
    if (f != NULL) fclose(f);
    return ms;
}

/* A 429 is the account's: a consumer whose call got one tells the others,
 * and they hold their new calls back for its Retry-After too, instead of
 * each spending a job's attempt on a certain 429. Jobs submitted during
 * the pause must start no sooner than its 1 s on either consumer (before,
 * the other consumer ran them at once). */
Test(gate, a_429_at_one_consumer_pauses_the_others_new_calls) {
    h_stack s;
    const h_stack_opts opts = {.env = {"KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=5s", NULL}};
    h_start(&s, &opts);
    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    char log2[PATH_MAX];
    pid_t second = gate_second_consumer(&s, env2, log2);

    char a[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!ratelimit=1 shared gate owl", a), 202);
    gate_either_arg told = {&s, log2, "provider rate limit (429), no new calls"};
    cr_assert(h_wait_for(gate_either_logged, &told, 10000, 5), "no consumer got the 429");
    enum { LATER = 6 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"shared gate wren %d\"}", LATER, later);
    gate_either_arg heard = {&s, log2, "provider rate limit (429) at another consumer"};
    cr_expect(h_wait_for(gate_either_logged, &heard, 5000, 20), "the other consumer did not hear of the 429");
    /* The hearer pauses the 429's 1 s and up to a fifth more: the teller's
     * calls go first. */
    long heard_ms = gate_heard_pause_ms(s.procs[H_CONSUMER].log_path);
    if (heard_ms < 0) heard_ms = gate_heard_pause_ms(log2);
    cr_expect(heard_ms >= 1000 && heard_ms <= 1200, "the hearer paused %ld ms for a 1 s Retry-After", heard_ms);

    int64_t a_start = gate_started_ms(&s, a, "the rate-limited job");
    for (int k = 0; k < LATER; k++) {
        int64_t t = gate_started_ms(&s, later[k], "a job submitted during the pause");
        cr_expect(t - a_start >= 900, "a job submitted during another consumer's 429 pause started %lld ms "
                  "after the 429'd call", (long long)(t - a_start));
        h_expect_job(&s, H_TOKEN_ALICE, later[k], "completed", 1, 5000, "a job submitted during the pause");
    }
    h_expect_job(&s, H_TOKEN_ALICE, a, "completed", 2, 5000, "the rate-limited job");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* An outage is the provider's: a consumer whose breaker trips tells the
 * others, which hold their new calls back (no attempt of theirs spent on
 * it, no breaker of their own tripped) until its probe finds the provider
 * back and it says so. */
Test(gate, a_breaker_tripped_at_one_consumer_holds_the_others_calls_until_the_provider_is_back) {
    h_stack s;
    gate_start_outage(&s, "KILN_PROVIDER_TRIP_AFTER=1", "KILN_RETRY_CAP=30s");
    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    char log2[PATH_MAX];
    pid_t second = gate_second_consumer(&s, env2, log2);

    char trig[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"shared breaker trigger\",\"max_attempts\":10}", trig),
                 202);
    gate_either_arg tripped = {&s, log2, "provider breaker tripped"};
    cr_assert(h_wait_for(gate_either_logged, &tripped, 10000, 5), "no breaker tripped");
    bool first_tripped = h_log_contains(&s, H_CONSUMER, "provider breaker tripped");
    gate_either_arg held = {&s, log2, "provider unavailable at another consumer"};
    cr_expect(h_wait_for(gate_either_logged, &held, 5000, 20), "the other consumer did not hear of the outage");

    /* kiln stats tells the tripped consumer from the one it holds back. */
    json_t *o = h_kiln_stats(&s);
    json_t *list = json_object_get(o, "consumers");
    int tripped_n = 0, held_n = 0;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *p = h_jstr(json_array_get(list, i), "provider");
        tripped_n += p != NULL && strcmp(p, "tripped") == 0;
        held_n += p != NULL && strcmp(p, "held") == 0;
    }
    cr_expect(tripped_n == 1 && held_n == 1, "kiln stats during the outage: %d tripped, %d held of %zu",
              tripped_n, held_n, json_array_size(list));
    json_decref(o);
    enum { LATER = 4 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"shared breaker queued %d\",\"max_attempts\":10}", LATER, later);
    /* Two probes fail (1 s, then 2 s of cool-down) before the provider is back. */
    const char *tripped_log = first_tripped ? NULL : log2;
    int64_t until = h_now_ms() + 15000;
    while (h_now_ms() < until &&
           (tripped_log == NULL ? h_log_count(&s, H_CONSUMER, "provider still unavailable")
                                : h_file_log_count(tripped_log, "provider still unavailable")) < 2)
        usleep(50000);
    cr_assert_eq(h_proc_start(&s, H_DEVPROVIDER), 0, "dev provider did not start again");

    for (int k = 0; k < LATER; k++)
        h_expect_job(&s, H_TOKEN_ALICE, later[k], "completed", -1, 30000, "a job queued during the outage");
    h_expect_job(&s, H_TOKEN_ALICE, trig, "completed", -1, 30000, "the trigger");
    /* The held consumer never tripped its own breaker: it made no call
     * while the provider was down. */
    int own_trips = first_tripped ? h_file_log_count(log2, "provider breaker tripped")
                                  : h_log_count(&s, H_CONSUMER, "provider breaker tripped");
    cr_expect_eq(own_trips, 0, "the held consumer called the provider during the outage and tripped");
    gate_either_arg over = {&s, log2, "provider outage over at another consumer"};
    cr_expect(h_wait_for(gate_either_logged, &over, 5000, 20), "the held consumer never heard the outage end");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* Consumers are often added because the queue grows, which is what an
 * outage does: one that starts while another's breaker is tripped asks,
 * hears of it and holds its calls back rather than tripping its own. */
Test(gate, a_consumer_started_during_another_ones_outage_hears_of_it) {
    h_stack s;
    gate_start_outage(&s, "KILN_PROVIDER_TRIP_AFTER=1", "KILN_RETRY_CAP=30s");
    char trig[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"late breaker trigger\",\"max_attempts\":10}", trig),
                 202);
    cr_assert(h_wait_log(&s, H_CONSUMER, "provider breaker tripped", 10000), "the breaker did not trip");
    enum { LATER = 4 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"late breaker queued %d\",\"max_attempts\":10}", LATER, later);

    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    char log2[PATH_MAX];
    pid_t second = gate_second_consumer(&s, env2, log2);
    cr_expect(h_wait_file_log(log2, "provider unavailable at another consumer", 5000),
              "the new consumer did not hear of the outage");
    /* Two more probes of the first consumer fail meanwhile (2 s, then 4 s of cool-down). */
    int failed = h_log_count(&s, H_CONSUMER, "provider still unavailable");
    int64_t until = h_now_ms() + 15000;
    while (h_now_ms() < until && h_log_count(&s, H_CONSUMER, "provider still unavailable") < failed + 1)
        usleep(50000);
    cr_assert_eq(h_proc_start(&s, H_DEVPROVIDER), 0, "dev provider did not start again");
    for (int k = 0; k < LATER; k++)
        h_expect_job(&s, H_TOKEN_ALICE, later[k], "completed", -1, 40000, "a job queued during the outage");
    cr_expect_eq(h_file_log_count(log2, "provider breaker tripped"), 0,
                 "the new consumer called the provider during the outage and tripped");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* A stack (cool-down up to cap) whose consumer tripped after three calls
 * into the stopped provider, and a second consumer that heard of it and
 * holds back; the second's pid, its log into log2. */
static pid_t gate_tripped_and_held(h_stack *s, const char *cap, const char *what, char log2[PATH_MAX]) {
    gate_start_outage(s, "KILN_PROVIDER_TRIP_AFTER=3", cap);
    char trig[3][65], body[128];
    snprintf(body, sizeof body, "{\"prompt\":\"%s trigger %%d\",\"max_attempts\":10}", what);
    h_submit_each(s, H_TOKEN_ALICE, body, 3, trig);
    cr_assert(h_wait_log(s, H_CONSUMER, "provider breaker tripped", 10000), "the breaker did not trip");
    const char *const env2[] = {"KILN_METRICS_ADDR=", NULL};
    pid_t second = gate_second_consumer(s, env2, log2);
    cr_assert(h_wait_file_log(log2, "provider unavailable at another consumer", 5000),
              "the new consumer did not hear of the outage");
    return second;
}

/* A consumer stopped while its breaker is tripped hands the probing over:
 * the one it held back trips its own breaker and sends one call at a time,
 * instead of every queued job's call into a provider last seen down. */
Test(gate, a_tripped_consumer_that_stops_hands_its_probing_over) {
    h_stack s;
    char log2[PATH_MAX];
    pid_t second = gate_tripped_and_held(&s, "KILN_RETRY_CAP=30s", "handover", log2);
    enum { LATER = 5 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"handover queued %d\",\"max_attempts\":10}", LATER, later);

    cr_assert_eq(h_proc_term(&s, H_CONSUMER), 0, "the tripped consumer did not stop cleanly");
    cr_expect(h_wait_file_log(log2, "provider breaker taken over", 5000), "the probing was not handed over");
    cr_assert(h_wait_file_log(log2, "provider still unavailable", 10000), "no probe of the second consumer failed");
    cr_assert_eq(h_proc_start(&s, H_DEVPROVIDER), 0, "dev provider did not start again");

    gate_expect_only_probes_spent(&s, log2, later, LATER);
    cr_expect(h_wait_file_log(log2, "provider breaker closed", 5000));
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* A tripped consumer killed without a word: the one it held back hears
 * nothing more, and when its hold runs out (twice KILN_RETRY_CAP) it takes
 * the probing over instead of sending every queued job's call into the
 * outage. */
Test(gate, a_hold_whose_teller_died_runs_out_into_probes) {
    h_stack s;
    char log2[PATH_MAX];
    pid_t second = gate_tripped_and_held(&s, "KILN_RETRY_CAP=2s", "lapse", log2);
    cr_assert_eq(h_proc_kill9(&s, H_CONSUMER), 0);
    enum { LATER = 5 };
    char later[LATER][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"lapse queued %d\",\"max_attempts\":10}", LATER, later);
    cr_expect(h_wait_file_log(log2, "provider breaker taken over: no word", 10000), "the hold never ran out into probes");
    cr_assert(h_wait_file_log(log2, "provider still unavailable", 10000), "no probe of the second consumer failed");
    cr_assert_eq(h_proc_start(&s, H_DEVPROVIDER), 0, "dev provider did not start again");
    gate_expect_only_probes_spent(&s, log2, later, LATER);
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* A 429 is one account's: consumers with another KILN_PROVIDER_KEY (another
 * account at the same URL) do not hear of it. */
Test(gate, a_429_is_not_told_to_consumers_of_another_account) {
    h_stack s;
    const h_stack_opts opts = {.env = {"KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=5s", NULL}};
    h_start(&s, &opts);
    const char *const env2[] = {"KILN_METRICS_ADDR=", "KILN_PROVIDER_KEY=another-account", NULL};
    char log2[PATH_MAX];
    pid_t second = gate_second_consumer(&s, env2, log2);
    char a[65], after[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!ratelimit=1 other account owl", a), 202);
    gate_either_arg told = {&s, log2, "provider rate limit (429), no new calls"};
    cr_assert(h_wait_for(gate_either_logged, &told, 10000, 5), "no consumer got the 429");
    /* News travels in a millisecond; a job run to its end after the 429 is
     * well past it. */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "other account wren", after), 202);
    h_expect_job(&s, H_TOKEN_ALICE, after, "completed", 1, 10000, "the job after the 429");
    h_expect_job(&s, H_TOKEN_ALICE, a, "completed", 2, 10000, "the rate-limited job");
    gate_either_arg heard = {&s, log2, "at another consumer"};
    cr_expect_not(gate_either_logged(&heard), "a consumer of another account heard of the 429");
    cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_stop(&s);
}

/* What is not provider news on kiln.consumer.provider (bytes that are no
 * ProviderNews, an event of a newer version) is logged and ignored: the
 * consumer goes on running jobs. */
Test(gate, bad_provider_news_is_ignored) {
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    static const char garbage[] = "\x0a\x50not provider news";
    cr_assert_eq(natsConnection_Publish(n.nc, "kiln.consumer.provider", garbage, (int)sizeof garbage - 1), NATS_OK);
    static const uint8_t unknown_event[] = {0x18, 0x63}; /* field 3 (event) = 99 */
    cr_assert_eq(natsConnection_Publish(n.nc, "kiln.consumer.provider", unknown_event, (int)sizeof unknown_event),
                 NATS_OK);
    cr_assert_eq(natsConnection_Flush(n.nc), NATS_OK);
    cr_expect(h_wait_log(&s, H_CONSUMER, "provider news that does not decode", 5000), "the garbage was not reported");
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after bad news owl", id), 202);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 10000, "a job after bad provider news");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_provider_peer_pauses_total"), 0, "bad news paused calls");
    h_nats_free(&n);
    h_stop(&s);
}
