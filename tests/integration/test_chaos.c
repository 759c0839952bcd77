/* test_chaos.c - the whole stack under random faults: while jobs flow in
 * through the gateway (with an Idempotency-Key, retried until answered) and
 * straight onto the three lanes of jobs.generate (with a Nats-Msg-Id,
 * retried until acked), the consumer, the store and the gateway are killed
 * (SIGKILL) or stopped (SIGTERM), the provider goes away and nats-server is
 * restarted, each at a random moment for a random time. Afterwards every
 * accepted job must end in the state its prompt scripts, once: one jobs.done
 * copy whose status is the job's, as many jobs per user as were submitted,
 * a readable image per completed job, no job whose provider call began while
 * another of its calls still ran, and no process that died on its own or
 * left a sanitizer report.
 *
 * KILN_CHAOS_SECS (default 30) is how long the faults go on, KILN_CHAOS_SEED
 * the random sequence (printed first, so a failure can be replayed with it),
 * KILN_CHAOS_NATS_KILL=1 adds nats-server SIGKILL to the faults, and
 * KILN_CHAOS_CONSUMERS=2 runs a second consumer beside the first (spared by
 * the faults; README Delivery says what two consumers cannot know of each
 * other's calls).
 * `make chaos` runs it for longer. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"

TestSuite(chaos, .fini = h_fini, .timeout = 1800);

#define CHAOS_MAX_JOBS 16384
#define CHAOS_MAX_ATTEMPTS 10
#define CHAOS_TERM_AFTER_MS 500 /* no SIGTERM sooner after a start */
/* Per attempt: a job that nats-server lost track of while it was processing
 * is re-driven once it has been processing this long and a minute more. */
#define CHAOS_TIMEOUT_S 10
#define CHAOS_JOBS_PER_SEC 40
#define CHAOS_SETTLE_MS 180000 /* after the faults: every job terminal within this */
/* and then announced within this: a store batch whose jobs.done was refused
 * during a NATS restart publishes it again, or after a lost nak comes back
 * after the store's AckWait (30 s). */
#define CHAOS_DONE_WAIT_MS 45000

typedef enum { KIND_PLAIN, KIND_SLOW, KIND_LONG, KIND_FLAKY, KIND_BAD, KIND_LIMITED, KIND_N } chaos_kind;

/* What each kind of job asks of the dev provider, how it must end, and how
 * many of every 100 jobs are of that kind. A 429 pauses every call of the
 * consumer for a second, so rate-limited jobs are rare. A long call outlasts
 * the harness's 2 s AckWait: only in-progress acks keep its message. */
static const struct {
    const char *directive;
    const char *want;
    int per100;
} chaos_kinds[KIND_N] = {
    [KIND_PLAIN] = {"", "completed", 40},
    [KIND_SLOW] = {"!sleep=400 ", "completed", 25},
    [KIND_LONG] = {"!sleep=3000 ", "completed", 5},
    [KIND_FLAKY] = {"!fail=500:1 ", "completed", 15},
    [KIND_BAD] = {"!fail=400 ", "failed", 14},
    [KIND_LIMITED] = {"!ratelimit=1 ", "completed", 1},
};

typedef enum { CANCEL_NONE, CANCEL_DONE, CANCEL_TOO_LATE, CANCEL_UNKNOWN } chaos_cancel;

typedef struct {
    char id[65];
    char prompt[96];
    chaos_kind kind;
    int via_http;          /* alice through the gateway, else bob on NATS */
    chaos_cancel cancel;
    char final[16];        /* the terminal state read after the faults */
    int done_copies;       /* jobs.done copies for this id */
    int done_disagree;     /* of those, copies whose status is not final */
} chaos_job;

/* A fault: what is done to which process, and how long it stays down. */
typedef struct {
    h_comp comp;
    int sig;
    int min_down_ms, max_down_ms;
    const char *what;
} chaos_fault;

static const chaos_fault chaos_faults[] = {
    {H_CONSUMER, SIGKILL, 0, 1500, "consumer SIGKILL"},
    {H_CONSUMER, SIGTERM, 0, 500, "consumer SIGTERM"},
    {H_STORE, SIGKILL, 0, 1500, "store SIGKILL"},
    {H_STORE, SIGTERM, 0, 500, "store SIGTERM"},
    {H_GATEWAY, SIGKILL, 0, 1000, "gateway SIGKILL"},
    {H_DEVPROVIDER, SIGKILL, 300, 2500, "provider outage"},
    {H_NATS, SIGTERM, 200, 1500, "nats-server restart"},
    /* Last, and only with KILN_CHAOS_NATS_KILL=1: nats-server 2.9.10 does
     * not always recover its consumers' state from a SIGKILL (see README). */
    {H_NATS, SIGKILL, 200, 1500, "nats-server SIGKILL"},
};
#define CHAOS_NFAULTS ((int)(sizeof chaos_faults / sizeof chaos_faults[0]))

typedef struct {
    h_stack s;
    natsConnection *nc;
    jsCtx *js;
    uint64_t rng;
    int64_t up_at[H_NPROC];    /* when a stopped process is started again; 0: running */
    int64_t started_at[H_NPROC]; /* when it was last started */
    int nats_kill;             /* KILN_CHAOS_NATS_KILL: nats-server SIGKILL among the faults */
    int fault_count[CHAOS_NFAULTS];
    chaos_job *jobs;
    int njobs;
} chaos_run;

static uint32_t chaos_rand(chaos_run *r, uint32_t bound)
{
    r->rng = r->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return bound == 0 ? 0 : (uint32_t)(r->rng >> 33) % bound;
}

static int chaos_between(chaos_run *r, int lo, int hi)
{
    return lo + (int)chaos_rand(r, (uint32_t)(hi - lo + 1));
}

static long chaos_env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? strtol(v, NULL, 10) : dflt;
}

/* Load pacing, not a wait for a condition: the load generator idles until
 * its next job is due. */
static void chaos_idle_until(int64_t at_ms)
{
    int64_t left = at_ms - h_now_ms();
    if (left <= 0) return;
    struct timespec ts = {left / 1000, (left % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts every stopped process whose downtime is over. */
static void chaos_restart_due(chaos_run *r, int64_t now)
{
    for (int c = 0; c < H_NPROC; c++) {
        if (r->up_at[c] == 0 || now < r->up_at[c]) continue;
        cr_assert_eq(h_proc_start(&r->s, (h_comp)c), 0, "could not start %s again", r->s.procs[c].name);
        r->up_at[c] = 0;
        r->started_at[c] = now;
    }
}

static void chaos_fault_one(chaos_run *r, int64_t now)
{
    int k = (int)chaos_rand(r, (uint32_t)(r->nats_kill ? CHAOS_NFAULTS : CHAOS_NFAULTS - 1));
    const chaos_fault *f = &chaos_faults[k];
    if (r->up_at[f->comp] != 0) return; /* already down */
    /* A SIGTERM before main() has blocked it (the loader, the sanitizers'
     * start-up) kills by default: a process just started gets SIGKILL only. */
    if (f->sig == SIGTERM && now - r->started_at[f->comp] < CHAOS_TERM_AFTER_MS) return;
    if (f->sig == SIGKILL) {
        cr_assert_eq(h_proc_kill9(&r->s, f->comp), 0, "%s failed", f->what);
    } else {
        int code = h_proc_term(&r->s, f->comp);
        /* nats-server exits non-zero on SIGTERM; a Kiln process must exit 0 */
        cr_expect(f->comp == H_NATS || code == 0, "%s: exit code %d", f->what, code);
    }
    r->up_at[f->comp] = now + chaos_between(r, f->min_down_ms, f->max_down_ms) + 1;
    r->fault_count[k]++;
}

static void chaos_prompt(chaos_run *r, chaos_job *j, uint64_t seed)
{
    int pick = (int)chaos_rand(r, 100);
    j->kind = KIND_PLAIN;
    while (pick >= chaos_kinds[j->kind].per100) pick -= chaos_kinds[j->kind++].per100;
    snprintf(j->prompt, sizeof j->prompt, "%schaos %" PRIu64 " job %d", chaos_kinds[j->kind].directive,
             seed, r->njobs);
}

/* One try at submitting job j through the gateway; 1 when it was accepted
 * (202, or 200 for a key the store already holds from an earlier try). */
static int chaos_try_http(chaos_run *r, chaos_job *j, const char *key)
{
    json_t *body = json_pack("{s:s, s:i, s:i}", "prompt", j->prompt, "max_attempts", CHAOS_MAX_ATTEMPTS,
                             "timeout_s", CHAOS_TIMEOUT_S);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char url[256], hdr[160];
    snprintf(url, sizeof url, "%s/v1/jobs", r->s.gw_url);
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    h_resp resp;
    long st = h_http_timeout(&resp, "POST", url, H_TOKEN_ALICE, "application/json", text, strlen(text), hdr,
                             5000);
    free(text);
    int ok = (st == 202 || st == 200) && h_jstr(resp.json, "id") != NULL;
    if (ok) snprintf(j->id, sizeof j->id, "%s", h_jstr(resp.json, "id"));
    /* Anything but a refusal of a correct request is the stack being down. */
    cr_assert(ok || st == 0 || st == 503 || st == 502, "submit %s answered %ld %s", key, st,
              resp.body != NULL ? resp.body : "");
    h_resp_free(&resp);
    return ok;
}

/* One try at publishing job j (id already set) to a random lane; 1 when
 * JetStream acked it. */
static int chaos_try_nats(chaos_run *r, chaos_job *j)
{
    static const char *const lanes[] = {"jobs.generate", "jobs.generate.high", "jobs.generate.low"};
    Kiln__V1__JobRequest q = KILN__V1__JOB_REQUEST__INIT;
    q.id = j->id;
    q.user_id = (char *)"bob";
    q.prompt = j->prompt;
    q.max_attempts = CHAOS_MAX_ATTEMPTS;
    q.timeout_s = CHAOS_TIMEOUT_S;
    return h_publish_request(r->js, lanes[chaos_rand(r, 3)], &q, 2000, NULL) == 0;
}

/* Cancels job j at once (a slow one: it is likely pending or running). */
static void chaos_cancel_one(chaos_run *r, chaos_job *j)
{
    h_resp resp;
    long st = h_job_post(&r->s, &resp, j->via_http ? H_TOKEN_ALICE : H_TOKEN_BOB, j->id, "cancel");
    const char *code = h_err_code(&resp);
    j->cancel = st == 200 ? CANCEL_DONE
              : st == 409 && code != NULL && strcmp(code, "already_finished") == 0 ? CANCEL_TOO_LATE
                                                                                    : CANCEL_UNKNOWN;
    cr_assert(st == 200 || st == 409 || st == 0 || st == 503 || st == 502 || st == 404,
              "cancel of %s answered %ld %s", j->id, st, resp.body != NULL ? resp.body : "");
    h_resp_free(&resp);
}

/* Submits one job, retrying (and letting faults happen and end meanwhile)
 * until it is accepted or until_ms passes. Returns 1 when it was. */
static int chaos_submit(chaos_run *r, uint64_t seed, int64_t until_ms, int faults_on, int64_t *next_fault)
{
    chaos_job *j = &r->jobs[r->njobs];
    memset(j, 0, sizeof *j);
    chaos_prompt(r, j, seed);
    j->via_http = (int)chaos_rand(r, 2);
    char key[48];
    snprintf(key, sizeof key, "chaos-%" PRIu64 "-%d", seed, r->njobs);
    if (!j->via_http) snprintf(j->id, sizeof j->id, "%s", key);
    for (;;) {
        int64_t now = h_now_ms();
        chaos_restart_due(r, now);
        if (faults_on && now >= *next_fault) {
            chaos_fault_one(r, now);
            *next_fault = now + chaos_between(r, 300, 2500);
        }
        if (j->via_http ? chaos_try_http(r, j, key) : chaos_try_nats(r, j)) break;
        if (h_now_ms() >= until_ms) return 0;
        chaos_idle_until(h_now_ms() + 50);
    }
    if (j->kind == KIND_SLOW && chaos_rand(r, 6) == 0) chaos_cancel_one(r, j);
    r->njobs++;
    return 1;
}

/* ---- checks ---------------------------------------------------------------- */

typedef struct {
    jsCtx *js;
    chaos_job *jobs;
    int njobs;
    int foreign;           /* jobs.done copies of ids this run never submitted */
} chaos_done_arg;

static int chaos_job_cmp(const void *a, const void *b)
{
    return strcmp(((const chaos_job *)a)->id, ((const chaos_job *)b)->id);
}

static void chaos_count_done(natsMsg *m, void *arg)
{
    chaos_done_arg *a = arg;
    chaos_job key;
    char status[32];
    if (!h_msg_header(m, "Kiln-Job-Id", key.id, sizeof key.id)) return;
    if (!h_msg_header(m, "Kiln-Status", status, sizeof status)) status[0] = '\0';
    chaos_job *j = bsearch(&key, a->jobs, (size_t)a->njobs, sizeof *a->jobs, chaos_job_cmp);
    if (j == NULL) {
        a->foreign++;
        return;
    }
    j->done_copies++;
    if (strcmp(status, j->final) != 0) j->done_disagree++;
}

/* Counts every job's jobs.done copies afresh; 1 when each has at least one. */
static int chaos_all_announced(void *arg)
{
    chaos_done_arg *a = arg;
    for (int i = 0; i < a->njobs; i++) a->jobs[i].done_copies = a->jobs[i].done_disagree = 0;
    a->foreign = 0;
    if (h_done_scan(a->js, chaos_count_done, a) < 0) return 0;
    for (int i = 0; i < a->njobs; i++)
        if (a->jobs[i].done_copies == 0) return 0;
    return 1;
}

/* How many of the run's jobs are not terminal now (one GET each, no wait):
 * a failure names the first such job, and this tells one lost job from a
 * stalled store (last round a run that stopped applying for minutes looked
 * like one job never ending). */
static int chaos_count_unfinished(chaos_run *r)
{
    int n = 0;
    for (int i = 0; i < r->njobs; i++) {
        json_t *job = h_get_job(&r->s, r->jobs[i].via_http ? H_TOKEN_ALICE : H_TOKEN_BOB, r->jobs[i].id, NULL);
        const char *state = h_jstr(job, "status");
        n += state == NULL || !h_state_terminal(state);
        json_decref(job);
    }
    return n;
}

/* Waits for job j to end and checks how it ended. */
static void chaos_check_job(chaos_run *r, chaos_job *j, int64_t deadline_at)
{
    const char *token = j->via_http ? H_TOKEN_ALICE : H_TOKEN_BOB;
    int64_t left = deadline_at - h_now_ms();
    json_t *job = h_wait_job(&r->s, token, j->id, NULL, left > 1000 ? left : 1000);
    char *d = h_job_dump(job);
    const char *state = h_jstr(job, "status");
    int unfinished = 0;
    if (state == NULL || !h_state_terminal(state)) {
        static const char *const durables[] = {"kiln-worker-high", "kiln-worker-normal", "kiln-worker-low",
                                               "kiln-store"};
        for (size_t k = 0; k < sizeof durables / sizeof durables[0]; k++) h_dump_durable(r->js, durables[k]);
        unfinished = chaos_count_unfinished(r);
    }
    cr_assert(state != NULL && h_state_terminal(state), "job %s (%s) never ended (%d of %d jobs not ended): %s",
              j->id, j->prompt, unfinished, r->njobs, d);
    snprintf(j->final, sizeof j->final, "%s", state);
    const char *want = chaos_kinds[j->kind].want;
    if (j->cancel == CANCEL_DONE) want = "cancelled";
    if (j->cancel == CANCEL_UNKNOWN && strcmp(state, "cancelled") == 0) want = "cancelled";
    cr_expect_str_eq(state, want, "job %s (%s, cancel %d) ended %s: %s", j->id, j->prompt, j->cancel, state, d);
    long long attempts = h_jint(job, "attempts");
    if (strcmp(state, "cancelled") != 0)
        cr_expect(attempts >= 1 && attempts <= CHAOS_MAX_ATTEMPTS, "job %s: attempts %lld: %s", j->id, attempts, d);
    if (strcmp(state, "completed") == 0) {
        json_t *img = json_array_get(json_object_get(job, "images"), 0);
        const char *url = h_jstr(img, "url");
        cr_expect(url != NULL, "completed job %s has no image: %s", j->id, d);
        if (url != NULL) {
            char full[512];
            snprintf(full, sizeof full, "%s%s", url[0] == '/' ? r->s.gw_url : "", url);
            h_resp resp;
            long st = h_http(&resp, "GET", full, token, NULL, NULL, NULL);
            cr_expect(st == 200 && resp.body_len > 8 && memcmp(resp.body, "\x89PNG\r\n\x1a\n", 8) == 0,
                      "image of %s: %ld, %zu bytes", j->id, st, resp.body_len);
            h_resp_free(&resp);
        }
    }
    free(d);
    json_decref(job);
}

/* How many jobs the user's list holds, page by page. */
static int chaos_list_all(chaos_run *r, const char *token)
{
    int total = 0;
    char query[512] = "?limit=200";
    for (int page = 0; page < 1000; page++) {
        json_t *l = h_list(&r->s, token, query);
        cr_assert(l != NULL, "list page %d failed", page);
        total += (int)json_array_size(json_object_get(l, "jobs"));
        const char *next = h_jstr(l, "next_cursor");
        if (next == NULL) {
            json_decref(l);
            return total;
        }
        snprintf(query, sizeof query, "?limit=200&cursor=%s", next);
        json_decref(l);
    }
    cr_assert_fail("list of %s never ended", token);
    return -1;
}

Test(chaos, random_faults_lose_no_job_and_settle_each_once)
{
    long secs = chaos_env_long("KILN_CHAOS_SECS", 30);
    uint64_t seed = (uint64_t)chaos_env_long("KILN_CHAOS_SEED", 0);
    if (seed == 0) seed = (uint64_t)time(NULL);
    fprintf(stderr, "chaos: seed=%" PRIu64 " secs=%ld (replay: KILN_CHAOS_SEED=%" PRIu64 ")\n", seed, secs,
            seed);

    static chaos_run r; /* large; one test per worker process */
    memset(&r, 0, sizeof r);
    r.rng = seed;
    r.nats_kill = chaos_env_long("KILN_CHAOS_NATS_KILL", 0) != 0;
    r.jobs = calloc(CHAOS_MAX_JOBS, sizeof *r.jobs);
    cr_assert(r.jobs != NULL);
    /* Quick retries keep the settling short; the breaker cools down within the
     * cap too. A consumer stopped while NATS is down cannot hand its jobs back
     * and waits for NATS up to its drain timeout and 5 s more: 3 + 5 s, within
     * the harness's 10 s stop deadline (this thread restarts NATS only after
     * the consumer exited). */
    const h_stack_opts opts = {.env = {"KILN_RETRY_BASE=100ms", "KILN_RETRY_CAP=2s", NULL},
                               .consumer_env = {"KILN_DRAIN_TIMEOUT=3s", NULL}};
    h_start(&r.s, &opts);
    cr_assert_eq(h_nats_connect(&r.s, &r.nc, &r.js), 0);
    pid_t second = 0;
    if (chaos_env_long("KILN_CHAOS_CONSUMERS", 1) >= 2) {
        const char *const env[] = {"KILN_METRICS_ADDR=", "KILN_DRAIN_TIMEOUT=3s", NULL};
        second = h_spawn_another(&r.s, H_CONSUMER, env, "consumer2");
        cr_assert(second > 0, "the second consumer did not start");
    }

    int64_t t0 = h_now_ms(), end = t0 + secs * 1000;
    int64_t next_fault = t0 + chaos_between(&r, 300, 2500);
    while (h_now_ms() < end && r.njobs < CHAOS_MAX_JOBS) {
        cr_assert(chaos_submit(&r, seed, h_now_ms() + 60000, 1, &next_fault), "job %d was never accepted",
                  r.njobs);
        chaos_idle_until(t0 + (int64_t)r.njobs * 1000 / CHAOS_JOBS_PER_SEC);
    }
    /* Faults over: every process back, and one more job accepted as a sign of life. */
    for (int c = 0; c < H_NPROC; c++)
        if (r.up_at[c] != 0) r.up_at[c] = 1;
    chaos_restart_due(&r, h_now_ms());
    cr_assert_eq(h_stack_wait_ready(&r.s), 0, "stack not ready after the faults");
    cr_assert(chaos_submit(&r, seed, h_now_ms() + 30000, 0, &next_fault), "no job accepted after the faults");

    int64_t settle_at = h_now_ms() + CHAOS_SETTLE_MS;
    int cancelled = 0, http = 0;
    for (int i = 0; i < r.njobs; i++) {
        chaos_check_job(&r, &r.jobs[i], settle_at);
        cancelled += r.jobs[i].cancel == CANCEL_DONE;
        http += r.jobs[i].via_http;
    }
    /* Exactly one terminal state each: one jobs.done copy, and it agrees. */
    qsort(r.jobs, (size_t)r.njobs, sizeof *r.jobs, chaos_job_cmp);
    chaos_done_arg da = {r.js, r.jobs, r.njobs, 0};
    (void)h_wait_for(chaos_all_announced, &da, CHAOS_DONE_WAIT_MS, 500);
    for (int i = 0; i < r.njobs; i++)
        cr_expect(r.jobs[i].done_copies == 1 && r.jobs[i].done_disagree == 0,
                  "job %s (%s) ended %s: %d jobs.done copies, %d of another status", r.jobs[i].id,
                  r.jobs[i].prompt, r.jobs[i].final, r.jobs[i].done_copies, r.jobs[i].done_disagree);
    cr_expect_eq(da.foreign, 0, "%d jobs.done copies of jobs never submitted", da.foreign);
    /* Never two calls of one job at once: every kind but plain has a directive,
     * so the dev provider logs a call that begins while the job's previous one
     * runs. A call cut by a SIGKILL ends when the provider sees its socket
     * close, long before the job is delivered again. */
    int overlaps = h_log_count(&r.s, H_DEVPROVIDER, "overlapping request");
    cr_expect_eq(overlaps, 0, "%d provider calls began while another call of the same job ran", overlaps);
    /* Retried submits made no second job (one per Idempotency-Key), and every
     * job published on NATS is listed (the job id is its Nats-Msg-Id). */
    cr_expect_eq(chaos_list_all(&r, H_TOKEN_ALICE), http, "alice submitted %d jobs", http);
    cr_expect_eq(chaos_list_all(&r, H_TOKEN_BOB), r.njobs - http, "bob published %d jobs", r.njobs - http);

    fprintf(stderr, "chaos: seed=%" PRIu64 ": %d jobs (%d through the gateway), %d cancelled, settled in %.1f s;",
            seed, r.njobs, http, cancelled, (double)(h_now_ms() - (settle_at - CHAOS_SETTLE_MS)) / 1000.0);
    for (int k = 0; k < CHAOS_NFAULTS; k++) fprintf(stderr, " %s %d", chaos_faults[k].what, r.fault_count[k]);
    fprintf(stderr, "\n");

    if (second > 0) cr_expect_eq(h_term_pid(second), 0, "the second consumer did not stop cleanly");
    h_nats_close(r.nc, r.js);
    free(r.jobs);
    h_stop(&r.s);
}
