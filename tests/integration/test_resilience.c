/* test_resilience.c - delivery semantics, resilience: NATS restarted under
 * load, the store killed while jobs finish, a consumer drained by SIGTERM, and
 * the consumer's available-memory floor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(resilience, .fini = h_fini, .timeout = 180);

/* Sets (or replaces) "K=V" in a component's environment for its next start.
 * The harness owns the array but never frees it; res_unset_env removes and
 * frees an entry this file added, so it does not leak. */
static void res_unset_env(h_proc *p, const char *name)
{
    size_t kl = strlen(name);
    for (int i = 0; i < p->nenv; i++) {
        if (strncmp(p->env[i], name, kl) == 0 && p->env[i][kl] == '=') {
            free(p->env[i]);
            for (int k = i; k + 1 < p->nenv; k++) p->env[k] = p->env[k + 1];
            p->env[--p->nenv] = NULL;
            return;
        }
    }
}

static void res_set_env(h_proc *p, const char *kv)
{
    const char *eq = strchr(kv, '=');
    size_t kl = eq != NULL ? (size_t)(eq - kv) : strlen(kv);
    char *d = strdup(kv);
    cr_assert(d != NULL);
    for (int i = 0; i < p->nenv; i++) {
        if (strncmp(p->env[i], kv, kl) == 0 && p->env[i][kl] == '=') {
            free(p->env[i]);
            p->env[i] = d;
            return;
        }
    }
    cr_assert(p->nenv < H_MAX_ENV, "environment full");
    p->env[p->nenv++] = d;
}

typedef struct {
    h_stack *s;
    int ready;
} res_ready_arg;

static int res_gateway_not_ready(void *arg)
{
    res_ready_arg *a = arg;
    char url[128];
    snprintf(url, sizeof url, "%s/readyz", a->s->gw_url);
    h_resp r;
    long st = h_http_timeout(&r, "GET", url, NULL, NULL, NULL, 0, NULL, 3000);
    h_resp_free(&r);
    return st != 200;
}

typedef struct {
    jsCtx *js;
    const char *durable;
} res_idle_arg;

/* A worker durable has nothing pending and nothing unacked. */
static int res_worker_idle(void *arg)
{
    res_idle_arg *a = arg;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, a->js, "KILN_JOBS", a->durable, NULL, &jerr) != NATS_OK) return 0;
    int idle = ci->NumAckPending == 0 && ci->NumPending == 0 && ci->Delivered.Stream > 0;
    jsConsumerInfo_Destroy(ci);
    return idle;
}

/* Diagnostics for a stuck job: where the worker durable thinks it is. */
static void res_dump_worker(jsCtx *js, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, js, "KILN_JOBS", durable, NULL, &jerr) != NATS_OK) {
        fprintf(stderr, "resilience: no consumer info for %s (jerr %d)\n", durable, (int)jerr);
        return;
    }
    fprintf(stderr,
            "resilience: %s delivered.stream=%llu ack_floor.stream=%llu num_ack_pending=%lld "
            "num_redelivered=%lld num_waiting=%lld num_pending=%llu\n",
            durable, (unsigned long long)ci->Delivered.Stream, (unsigned long long)ci->AckFloor.Stream,
            (long long)ci->NumAckPending, (long long)ci->NumRedelivered, (long long)ci->NumWaiting,
            (unsigned long long)ci->NumPending);
    jsConsumerInfo_Destroy(ci);
}

static void res_expect_completed_once(h_stack *s, jsCtx *js, const char *id, int attempts, int64_t deadline_ms)
{
    json_t *j = h_wait_job(s, H_TOKEN_ALICE, id, NULL, deadline_ms);
    char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "job %s: %s", id, d);
    if (attempts > 0) cr_expect_eq(h_jint(j, "attempts"), attempts, "job %s: %s", id, d);
    free(d);
    json_decref(j);
    if (js != NULL) {
        char v[64] = "";
        int n = h_done_count(js, id, v, sizeof v);
        cr_expect_eq(n, 1, "KILN_DONE holds %d copies for %s (want exactly 1)", n, id);
        cr_expect_str_eq(v, "completed", "jobs.done Kiln-Status for %s", id);
    }
}

Test(resilience, nats_restart_every_accepted_job_completes)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    enum { NRUN = 5, NDELAY = 2 };
    char run[NRUN][65], del[NDELAY][65];
    for (int i = 0; i < NRUN; i++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=1500 outage mole %d", i);
        cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, p, run[i]), 202);
    }
    for (int i = 0; i < NDELAY; i++) {
        char b[96];
        snprintf(b, sizeof b, "{\"prompt\":\"delayed outage mole %d\",\"delay_ms\":3000}", i);
        cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, b, del[i]), 202);
    }
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, run[0], "processing", 15000);
    cr_expect_str_eq(h_jstr(j, "status"), "processing");
    json_decref(j);

    /* Same port, same store dir: an outage, not a new server. */
    h_proc_term(&s, H_NATS);
    res_ready_arg ra = {&s, 0};
    cr_expect(h_wait_for(res_gateway_not_ready, &ra, 10000, 100), "gateway /readyz stayed 200 with NATS down");
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "gateway not ready after NATS came back");

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    for (int i = 0; i < NRUN; i++) res_expect_completed_once(&s, js, run[i], 0, 60000);
    for (int i = 0; i < NDELAY; i++) {
        json_t *dj = h_wait_job(&s, H_TOKEN_ALICE, del[i], "completed", 30000);
        if (!h_state_terminal(h_jstr(dj, "status"))) res_dump_worker(js, "kiln-worker-normal");
        json_decref(dj);
        res_expect_completed_once(&s, js, del[i], 1, 1000);
    }
    cr_expect(h_proc_alive(&s, H_STORE), "store died with the NATS outage");
    cr_expect(h_proc_alive(&s, H_CONSUMER), "consumer died with the NATS outage");
    cr_expect(h_proc_alive(&s, H_GATEWAY), "gateway died with the NATS outage");

    /* And new work flows. */
    char id[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after outage mole", id), 202);
    res_expect_completed_once(&s, js, id, 1, 30000);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(resilience, store_killed_jobs_done_still_announced)
{
    h_stack s;
    cr_assert_eq(h_stack_start(&s, NULL), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    natsSubscription *done = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&done, nc, "jobs.done"), NATS_OK);
    cr_assert_eq(natsConnection_Flush(nc), NATS_OK);

    enum { N = 3 };
    char ids[N][65];
    for (int i = 0; i < N; i++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=1200 store down mole %d", i);
        cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, p, ids[i]), 202);
    }
    for (int i = 0; i < N; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, ids[i], "processing", 15000);
        cr_expect_str_eq(h_jstr(j, "status"), "processing", "job %d never started", i);
        json_decref(j);
    }
    cr_assert_eq(h_proc_kill9(&s, H_STORE), 0);
    /* The jobs end while the store is down. */
    res_idle_arg ia = {js, "kiln-worker-normal"};
    cr_expect(h_wait_for(res_worker_idle, &ia, 20000, 100), "consumer did not finish the jobs with the store down");
    for (int i = 0; i < N; i++) {
        char v[64];
        cr_expect_eq(h_done_count(js, ids[i], v, sizeof v), 0, "jobs.done before the store recorded it");
    }

    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after the store restart");
    for (int i = 0; i < N; i++) {
        natsMsg *m = h_next_msg_for(done, ids[i], 20000);
        cr_expect(m != NULL, "store: job %d ended while the store was down and was never announced", i);
        natsMsg_Destroy(m);
        res_expect_completed_once(&s, js, ids[i], 1, 10000);
    }
    natsSubscription_Destroy(done);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

Test(resilience, consumer_sigterm_drains_in_flight)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_CONCURRENCY=2", "KILN_DRAIN_TIMEOUT=10s", NULL}};
    cr_assert_eq(h_stack_start(&s, &o), 0, "stack did not start");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);

    enum { NFLY = 2, NQ = 3 };
    char fly[NFLY][65], q[NQ][65];
    for (int i = 0; i < NFLY; i++) {
        char p[64];
        snprintf(p, sizeof p, "!sleep=1500 draining shrew %d", i);
        cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, p, fly[i]), 202);
    }
    for (int i = 0; i < NFLY; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, fly[i], "processing", 15000);
        cr_assert_str_eq(h_jstr(j, "status"), "processing", "in-flight job %d never started", i);
        json_decref(j);
    }
    for (int i = 0; i < NQ; i++) {
        char p[64];
        snprintf(p, sizeof p, "queued shrew %d", i);
        cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, p, q[i]), 202);
    }

    int64_t t0 = h_now_ms();
    int rc = h_proc_term(&s, H_CONSUMER);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(rc, 0, "consumer: exit code %d after SIGTERM", rc);
    cr_expect(took < 10000, "consumer: took %lld ms to drain (drain timeout 10 s)", (long long)took);

    /* The in-flight jobs finished during the drain, once. */
    for (int i = 0; i < NFLY; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, fly[i], NULL, 5000);
        char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        cr_expect_str_eq(h_jstr(j, "status"), "completed", "consumer: in-flight job %d not finished by the drain: %s", i, d);
        free(d);
        json_decref(j);
    }
    /* The queued ones were not taken (or were handed back) and wait. */
    for (int i = 0; i < NQ; i++) {
        json_t *j = h_get_job(&s, H_TOKEN_ALICE, q[i], NULL);
        char *d = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
        cr_expect(!h_state_terminal(h_jstr(j, "status")), "queued job %d ended with no consumer: %s", i, d);
        free(d);
        json_decref(j);
    }

    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    for (int i = 0; i < NQ; i++) res_expect_completed_once(&s, js, q[i], 0, 30000);
    for (int i = 0; i < NFLY; i++) res_expect_completed_once(&s, js, fly[i], 1, 5000);
    h_nats_close(nc, js);
    cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown (see logs)");
}

/* The consumer's setting for the minimum available memory, found in --help,
 * and a value far above / far below any machine's available memory in the
 * setting's own syntax (an <int> uses the ends of its [lo..hi] range). */
static int res_find_mem_setting(h_stack *s, char *name, size_t len, char *high, char *low, size_t vlen)
{
    char *out = NULL;
    char *argv[] = {"kiln-consumer", "--help", NULL};
    h_run_cli(s, argv, &out, 10000);
    int found = 0;
    for (const char *p = out; p != NULL && (p = strstr(p, "KILN_")) != NULL; p += 5) {
        size_t n = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789");
        char tok[128];
        snprintf(tok, sizeof tok, "%.*s", (int)n, p);
        if (strstr(tok, "MEM") == NULL) continue;
        snprintf(name, len, "%s", tok);
        found = 1;
        const char *bol = p;
        while (bol > out && bol[-1] != '\n') bol--;
        const char *eol = strchr(p, '\n');
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(eol != NULL ? eol - bol : (long)strlen(bol)), bol);
        long long lo = 0, hi = 0;
        const char *rg = strrchr(line, '[');
        if (strstr(line, "<int>") != NULL) {
            if (rg == NULL || sscanf(rg, "[%lld..%lld]", &lo, &hi) != 2) {
                lo = 0;
                hi = 1000000000000LL;
            }
            snprintf(high, vlen, "%lld", hi);
            snprintf(low, vlen, "%lld", lo);
        } else {
            snprintf(high, vlen, "1000000MB");
            snprintf(low, vlen, "1MB");
        }
        break;
    }
    free(out);
    return found;
}

typedef struct {
    h_stack *s;
    const char *id;
} res_job_arg;

static int res_job_started(void *arg)
{
    res_job_arg *a = arg;
    json_t *j = h_get_job(a->s, H_TOKEN_ALICE, a->id, NULL);
    const char *st = h_jstr(j, "status");
    int started = st != NULL && strcmp(st, "pending") != 0;
    json_decref(j);
    return started;
}

Test(resilience, memory_floor_holds_jobs)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    cr_assert_eq(h_stack_start(&s, &o), 0, "stack did not start");
    char name[128] = "", high[64] = "", low[64] = "";
    int have = res_find_mem_setting(&s, name, sizeof name, high, low, sizeof high);
    if (!have) {
        h_stack_stop(&s);
        cr_assert_fail("consumer: no available-memory floor setting (no KILN_*MEM* in kiln-consumer --help)");
    }
    char kv[192];
    snprintf(kv, sizeof kv, "%s=%s", name, high); /* far above any machine's available memory */
    res_set_env(&s.procs[H_CONSUMER], kv);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "memory starved mole", id), 202);
    res_job_arg a = {&s, id};
    cr_expect(!h_wait_for(res_job_started, &a, 3000, 100), "consumer: started a job below the memory floor (%s)", kv);
    cr_expect(h_proc_alive(&s, H_CONSUMER), "consumer exited with %s (should wait, not die)", kv);
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_eq(h_jint(j, "attempts"), 0, "memory floor used an attempt");
    json_decref(j);

    if (h_proc_alive(&s, H_CONSUMER)) cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "consumer exit code with the floor");
    snprintf(kv, sizeof kv, "%s=%s", name, low);
    res_set_env(&s.procs[H_CONSUMER], kv);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    j = h_wait_job(&s, H_TOKEN_ALICE, id, NULL, 30000);
    cr_expect_str_eq(h_jstr(j, "status"), "completed", "job after lowering the memory floor");
    json_decref(j);
    int problems = h_stack_stop(&s);
    res_unset_env(&s.procs[H_CONSUMER], name);
    cr_assert_eq(problems, 0, "unclean shutdown (see logs)");
}
