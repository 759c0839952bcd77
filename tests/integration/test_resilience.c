/* test_resilience.c - durability and outages: the store restarted (SIGTERM)
 * on its data dir or killed (SIGKILL) while jobs finish, NATS restarted under
 * load, nats-server stopping to answer while streams are provisioned, and
 * the consumer's available-memory floor. Consumer SIGKILL/SIGTERM are in
 * test_consumer.c. */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../harness.h"
#include "clock.h"
#include "kiln_client.h"
#include "natsconn.h"
#include "provision.h"

TestSuite(resilience, .fini = h_fini, .timeout = 180);

typedef struct {
    const char *path;
    const char *text;
} res_log_wait;

/* Whether the log at w->path holds w->text. */
static int res_log_has(void *arg)
{
    const res_log_wait *w = arg;
    char line[1024];
    int found = 0;
    FILE *f = fopen(w->path, "r");
    if (f == NULL) return 0;
    while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, w->text) != NULL;
    fclose(f);
    return found;
}

static int res_gateway_not_ready(void *arg)
{
    return h_gw_status(arg, "/readyz", 3000) != 200;
}

/* The job completed (with `attempts` attempts when > 0) and jobs.done announced it once. */
static void res_expect_completed_once(h_stack *s, h_nats *n, const char *id, int attempts, int64_t deadline_ms)
{
    h_expect_job(s, H_TOKEN_ALICE, id, "completed", attempts > 0 ? attempts : -1, deadline_ms, "job");
    h_expect_done_once(n, id, "completed", 10000);
}

Test(resilience, store_sigterm_restart_keeps_jobs_and_catches_up)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    enum { N = 4 };
    char ids[N][65];
    json_t *before[N];
    const char *prompts[N] = {"restart fox 0", "restart fox 1", "!fail=400 restart bad", "restart fox 3"};
    for (int i = 0; i < N; i++) cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, prompts[i], ids[i]), 202);
    for (int i = 0; i < N; i++) {
        before[i] = h_wait_job(&s, H_TOKEN_ALICE, ids[i], NULL, 30000);
        cr_assert(before[i] != NULL && h_state_terminal(h_jstr(before[i], "status")), "job %d not terminal", i);
    }
    /* Every terminal job is announced before the store goes down. */
    for (int i = 0; i < N; i++)
        cr_expect(h_collect_wait(n.done, ids[i], 1, 15000) >= 1, "no jobs.done for %s", ids[i]);
    /* Mark one viewed: the flag must survive too. */
    h_resp r;
    cr_expect_eq(h_job_post(&s, &r, H_TOKEN_ALICE, ids[0], "viewed"), 200);
    h_resp_free(&r);

    cr_assert_eq(h_proc_term(&s, H_STORE), 0, "store did not exit 0 on SIGTERM");

    /* A job published while the store is down (the store never saw its
     * request) is processed by the consumer, and announced only once the
     * store has recorded it. */
    char down_id[65];
    h_unique_id(down_id, "while-store-down");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", down_id, "alice", "fox while the store is down"), 0);
    cr_expect(h_wait_worker_idle(n.js, "kiln-worker-normal", 30000),
              "consumer did not finish the job while the store was down");
    cr_expect_eq(h_collect_wait(n.done, down_id, 0, 0), 0, "jobs.done published while the store was down");

    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "stack not ready after store restart");

    cr_expect(h_collect_wait(n.done, down_id, 1, 30000) >= 1, "job completed while the store was down was never announced");
    res_expect_completed_once(&s, &n, down_id, 1, 5000);

    for (int i = 0; i < N; i++) {
        long gst = 0;
        json_t *j = h_get_job(&s, H_TOKEN_ALICE, ids[i], &gst);
        cr_expect_eq(gst, 200, "job %s lost by the store restart", ids[i]);
        cr_expect_str_eq(h_jstr(j, "status"), h_jstr(before[i], "status"));
        cr_expect_eq(h_jint(j, "attempts"), h_jint(before[i], "attempts"));
        cr_expect_str_eq(h_jstr(j, "completed_at"), h_jstr(before[i], "completed_at"));
        cr_expect_eq(json_is_true(json_object_get(j, "viewed")), i == 0, "viewed flag after restart (job %d)", i);
        /* A clean restart announces nothing twice. */
        h_expect_done_once(&n, ids[i], h_jstr(before[i], "status"), 1000);
        json_decref(j);
        json_decref(before[i]);
    }
    json_t *l = h_list(&s, H_TOKEN_ALICE, "");
    char *d = h_job_dump(l);
    cr_expect_eq(json_array_size(json_object_get(l, "jobs")), N + 1, "list after restart: %s", d);
    cr_expect_eq(h_jint(l, "unviewed_count"), N, "unviewed_count after restart: %s", d);
    cr_expect_eq(h_jint(l, "active_count"), 0, "active_count after restart: %s", d);
    free(d);
    json_decref(l);

    h_nats_free(&n);
    h_stop(&s);
}

Test(resilience, store_killed_jobs_done_still_announced)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);

    enum { N = 3 };
    char ids[N][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1200 store down mole %d\"}", N, ids);
    for (int i = 0; i < N; i++) {
        json_t *j = h_wait_job(&s, H_TOKEN_ALICE, ids[i], "processing", 15000);
        cr_expect_str_eq(h_jstr(j, "status"), "processing", "job %d never started", i);
        json_decref(j);
    }
    cr_assert_eq(h_proc_kill9(&s, H_STORE), 0);
    /* The jobs end while the store is down. */
    cr_expect(h_wait_worker_idle(n.js, "kiln-worker-normal", 20000),
              "consumer did not finish the jobs with the store down");
    for (int i = 0; i < N; i++)
        cr_expect_eq(h_collect_wait(n.done, ids[i], 0, 0), 0, "jobs.done for %s before the store recorded it", ids[i]);

    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after the store restart");
    for (int i = 0; i < N; i++) {
        cr_expect(h_collect_wait(n.done, ids[i], 1, 20000) >= 1,
                     "store: job %d ended while the store was down and was never announced", i);
        res_expect_completed_once(&s, &n, ids[i], 1, 10000);
    }
    h_nats_free(&n);
    h_stop(&s);
}

Test(resilience, nats_restart_every_accepted_job_completes)
{
    h_stack s;
    h_start(&s, NULL);
    /* Jobs nak'd with a delay at the moment of the restart, which nats-server
     * 2.9.10 can drop at recovery, are covered by
     * stall/delayed_jobs_survive_nats_restarts (the store's sweep repairs them). */
    enum { NRUN = 5 };
    char run[NRUN][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1500 outage mole %d\"}", NRUN, run);
    json_t *j = h_wait_job(&s, H_TOKEN_ALICE, run[0], "processing", 15000);
    cr_expect_str_eq(h_jstr(j, "status"), "processing");
    json_decref(j);

    /* Same port, same store dir: an outage, not a new server. */
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_expect(h_wait_for(res_gateway_not_ready, &s, 10000, 100), "gateway /readyz stayed 200 with NATS down");
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "gateway not ready after NATS came back");

    h_nats n;
    h_nats_open(&s, &n);
    for (int i = 0; i < NRUN; i++) res_expect_completed_once(&s, &n, run[i], 0, 60000);
    cr_expect(h_proc_alive(&s, H_STORE), "store died with the NATS outage");
    cr_expect(h_proc_alive(&s, H_CONSUMER), "consumer died with the NATS outage");
    cr_expect(h_proc_alive(&s, H_GATEWAY), "gateway died with the NATS outage");

    /* And new work flows. */
    char id[65];
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after outage mole", id), 202);
    res_expect_completed_once(&s, &n, id, 1, 30000);
    h_nats_free(&n);
    h_stop(&s);
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

Test(resilience, memory_floor_holds_jobs)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    char name[128] = "", high[64] = "", low[64] = "";
    int have = res_find_mem_setting(&s, name, sizeof name, high, low, sizeof high);
    if (!have) {
        h_stack_stop(&s);
        cr_assert_fail("consumer: no available-memory floor setting (no KILN_*MEM* in kiln-consumer --help)");
    }
    char kv[192];
    snprintf(kv, sizeof kv, "%s=%s", name, high); /* far above any machine's available memory */
    cr_assert_eq(h_proc_setenv(&s, H_CONSUMER, kv), 0);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);

    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "memory starved mole", id), 202);
    /* Observation window: the job must not start while the floor holds. */
    char why[2048];
    cr_expect(h_job_stays(&s, H_TOKEN_ALICE, id, "pending", 3000, why, sizeof why),
              "consumer: started a job below the memory floor (%s): %s", kv, why);
    cr_expect(h_proc_alive(&s, H_CONSUMER), "consumer exited with %s (should wait, not die)", kv);
    json_t *j = h_get_job(&s, H_TOKEN_ALICE, id, NULL);
    cr_expect_eq(h_jint(j, "attempts"), 0, "memory floor used an attempt");
    json_decref(j);

    if (h_proc_alive(&s, H_CONSUMER)) cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "consumer exit code with the floor");
    snprintf(kv, sizeof kv, "%s=%s", name, low);
    cr_assert_eq(h_proc_setenv(&s, H_CONSUMER, kv), 0);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "job after lowering the memory floor");
    h_stop(&s);
}

/* With nats-server gone, SIGTERM still ends every process soon and cleanly
 * (the store waited 30 s per drained subscription for UNSUB flushes that
 * could not happen; its queries now drain against one 5 s deadline; and it
 * waited for a queue-depth read in flight before it told its apply loop to
 * stop, each up to 5 s). */
Test(resilience, every_process_stops_promptly_without_nats)
{
    h_stack s;
    /* The store's queue-depth reads, every 100 ms, keep one in flight (each
     * waits up to 5 s with NATS down) when its SIGTERM comes. */
    h_stack_opts o = {.env = {"KILN_QUEUE_STATS_INTERVAL=100ms"}};
    h_start(&s, &o);
    (void)h_proc_term(&s, H_NATS); /* nats-server's own exit code on SIGTERM is not 0 */
    cr_assert(!h_proc_alive(&s, H_NATS), "nats-server did not stop");
    const h_comp comps[] = {H_GATEWAY, H_CONSUMER, H_STORE};
    for (size_t i = 0; i < sizeof comps / sizeof comps[0]; i++) {
        int64_t t0 = kiln_mono_ms();
        int code = h_proc_term(&s, comps[i]);
        int64_t ms = kiln_mono_ms() - t0;
        cr_expect_eq(code, 0, "component %d exited with %d after SIGTERM", (int)comps[i], code);
        cr_expect_lt(ms, 8000, "component %d took %lld ms to stop without NATS", (int)comps[i],
                     (long long)ms);
    }
    /* Started while NATS is down, each waits to connect (up to its connect
     * timeout, 12-30 s); SIGTERM in that wait stops it at once, exit 0. */
    for (size_t i = 0; i < sizeof comps / sizeof comps[0]; i++) {
        cr_assert_eq(h_proc_start(&s, comps[i]), 0);
        res_log_wait wait = {s.procs[comps[i]].log_path, "nats connect failed, retrying"};
        cr_assert(h_wait_for(res_log_has, &wait, 15000, 50),
                  "component %d never said it is retrying to connect", (int)comps[i]);
        int64_t t0 = kiln_mono_ms();
        int code = h_proc_term(&s, comps[i]);
        int64_t ms = kiln_mono_ms() - t0;
        cr_expect_eq(code, 0, "component %d exited with %d after SIGTERM while connecting",
                     (int)comps[i], code);
        cr_expect_lt(ms, 2000, "component %d took %lld ms to stop while connecting", (int)comps[i],
                     (long long)ms);
    }
    h_stop(&s);
}

/* Resumes the nats-server stopped with SIGSTOP, 2 s later: the length of
 * the fault, not a wait for a condition. */
static void *res_resume_nats(void *arg)
{
    const h_stack *s = arg;
    struct timespec ts = {2, 0};
    while (nanosleep(&ts, &ts) != 0) {
    }
    if (kill(s->procs[H_NATS].pid, SIGCONT) != 0) perror("harness: SIGCONT nats-server");
    return NULL;
}

/* A nats-server that stops answering while a service provisions its streams
 * (a restart during its start-up) is waited out, not a reason to exit: the
 * chaos test saw a consumer exit 1 when its provisioning timed out. */
Test(resilience, provisioning_waits_out_a_nats_server_that_stops_answering)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    kiln_nats_opts no;
    kiln_nats_opts_init(&no);
    no.name = "test-provision";
    no.js_wait_ms = 500;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(kiln_nats_connect_opts(s.nats_url, &no, &nc, &js), KILN_OK);
    kiln_provision_opts po;
    kiln_provision_opts_init(&po);
    cr_assert_eq(kiln_provision(js, &po), KILN_OK);

    cr_assert_eq(kill(s.procs[H_NATS].pid, SIGSTOP), 0);
    /* The CLI's way: a timeout is an answer. */
    kiln_status st = kiln_provision(js, &po);
    cr_expect_eq(st, KILN_ETIMEOUT, "provisioning against a stopped nats-server: %s", kiln_status_str(st));
    /* A service's way: waited out. */
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, res_resume_nats, &s), 0);
    po.retry_for_ms = 20000;
    int64_t t0 = h_now_ms();
    st = kiln_provision(js, &po);
    int64_t took = h_now_ms() - t0;
    pthread_join(t, NULL);
    cr_expect_eq(st, KILN_OK, "provisioning through a 2 s stop: %s after %lld ms", kiln_status_str(st),
                 (long long)took);
    cr_expect_geq(took, 1500, "provisioning did not wait for the stopped nats-server (%lld ms)", (long long)took);
    kiln_nats_close(nc, js);
    h_stop(&s);
}

/* Sets KILN_DONE's message limit (0: none) and whether it then refuses new
 * messages (discard new) or drops old ones. */
static void res_done_limit(jsCtx *js, int64_t max_msgs, bool refuse)
{
    jsStreamInfo *si = NULL, *up = NULL;
    jsErrCode jerr = 0;
    cr_assert_eq(js_GetStreamInfo(&si, js, "KILN_DONE", NULL, &jerr), NATS_OK, "stream info: jerr %d", (int)jerr);
    si->Config->MaxMsgs = max_msgs > 0 ? max_msgs : -1;
    si->Config->Discard = refuse ? js_DiscardNew : js_DiscardOld;
    natsStatus s = js_UpdateStream(&up, js, si->Config, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    jsStreamInfo_Destroy(up);
    cr_assert_eq(s, NATS_OK, "stream update: %s jerr %d", natsStatus_GetText(s), (int)jerr);
}

/* Messages on the job's own event subject in KILN_EVENTS. */
static int64_t res_job_events(jsCtx *js, const char *id)
{
    char filter[160];
    snprintf(filter, sizeof filter, "kiln.events.*.%s", id);
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    cr_assert_eq(js_GetStreamInfo(&si, js, "KILN_EVENTS", &o, &jerr), NATS_OK, "events info: jerr %d", (int)jerr);
    int64_t n = 0;
    if (si->State.Subjects != NULL)
        for (int i = 0; i < si->State.Subjects->Count; i++) n += (int64_t)si->State.Subjects->List[i].Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

/* jobs.done that JetStream refuses (here KILN_DONE full with discard new; in
 * the chaos test, JetStream shutting down for a restart) is published again
 * by the store itself, not left to a nak of its batch: a restarting server
 * can lose that nak, and the announcement then waited for the store's
 * AckWait (30 s). Only what was refused goes again: no event repeats. */
Test(resilience, a_refused_jobs_done_is_published_again_without_a_redelivery)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char first[65], id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "announced fox", first), 202);
    h_expect_job(&s, H_TOKEN_ALICE, first, "completed", 1, 20000, "first job");
    h_expect_done_once(&n, first, "completed", 10000);
    int64_t events_first = res_job_events(n.js, first);
    cr_assert_gt(events_first, 0, "no events of the first job on kiln.events.*.%s", first);

    res_done_limit(n.js, 1, true); /* holds the first job's copy; refuses more */
    double retries0 = h_metric(&s, H_STORE, "kiln_store_batch_retries_total");
    cr_assert_geq(retries0, 0, "no kiln_store_batch_retries_total");
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "refused fox", id), 202);
    cr_assert(h_wait_log(&s, H_STORE, "publish failed subject=jobs.done", 20000), "jobs.done was never refused");
    res_done_limit(n.js, 0, false);

    h_expect_done_once(&n, id, "completed", 10000);
    cr_expect_eq(h_metric(&s, H_STORE, "kiln_store_batch_retries_total"), retries0,
                 "the batch was nak'd for redelivery instead");
    cr_expect(h_log_contains(&s, H_STORE, "jobs.done/events published again"));
    cr_expect_eq(res_job_events(n.js, id), events_first, "the refused job's events (first job: %lld)",
                 (long long)events_first);
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    const char *header, *value;
    uint64_t seq;
} res_seq_arg;

static void res_seq_one(natsMsg *m, void *arg)
{
    res_seq_arg *a = arg;
    char v[128];
    if (h_msg_header(m, a->header, v, sizeof v) && strcmp(v, a->value) == 0) a->seq = natsMsg_GetSequence(m);
}

/* The sequence of the (last) message in stream whose header is value; 0 when none. */
static uint64_t res_seq_of(jsCtx *js, const char *stream, const char *header, const char *value)
{
    res_seq_arg a = {header, value, 0};
    cr_assert_geq(h_stream_scan(js, stream, res_seq_one, &a), 0, "%s could not be read", stream);
    return a.seq;
}

enum { RES_EVENTS_MAX = 8 };

typedef struct {
    char tail[80]; /* ".<id>": the job's own event subject ends so */
    uint64_t *seqs;
    char (*keys)[160];
    int n;
} res_event_list_arg;

static void res_event_list_one(natsMsg *m, void *arg)
{
    res_event_list_arg *a = arg;
    const char *subj = natsMsg_GetSubject(m);
    size_t sl = strlen(subj), tl = strlen(a->tail);
    if (a->n == RES_EVENTS_MAX || sl <= tl || strcmp(subj + sl - tl, a->tail) != 0) return;
    a->seqs[a->n] = natsMsg_GetSequence(m);
    if (!h_msg_header(m, "Kiln-Event-Key", a->keys[a->n], 160)) a->keys[a->n][0] = '\0';
    a->n++;
}

/* The messages on id's own event subject in KILN_EVENTS: their sequences
 * and Kiln-Event-Keys, oldest first; returns how many. */
static int res_job_event_list(jsCtx *js, const char *id, uint64_t *seqs, char keys[][160])
{
    res_event_list_arg a = {.seqs = seqs, .keys = keys};
    snprintf(a.tail, sizeof a.tail, ".%s", id);
    cr_assert_geq(h_stream_scan(js, "KILN_EVENTS", res_event_list_one, &a), 0, "KILN_EVENTS could not be read");
    return a.n;
}

/* nats-server 2.9.10 can lose messages it has confirmed when it is killed:
 * in chaos runs a completed job's jobs.done, confirmed ~40 ms before the
 * kill, was not in KILN_DONE after the restart. The test makes that state by
 * deleting confirmed messages and restarting nats-server: a job's jobs.done
 * and both its events (processing, then completed). The store must announce
 * the jobs.done and the completed event again, once each, but not the
 * processing event (the completed one says more, and must stay last), and
 * leave the job whose announcements survived alone. */
Test(resilience, announcements_nats_server_lost_after_confirming_them_are_published_again)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char kept[65], lost[65];
    /* Both slow and submitted together: their announcements are confirmed
     * within the store's last 0.5 s of publishing, so both are checked. */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=300 kept heron", kept), 202);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=300 lost heron", lost), 202);
    cr_assert_geq(h_collect_wait(n.done, kept, 1, 20000), 1, "no jobs.done for %s", kept);
    cr_assert_geq(h_collect_wait(n.done, lost, 1, 20000), 1, "no jobs.done for %s", lost);

    uint64_t seq = res_seq_of(n.js, "KILN_DONE", "Kiln-Job-Id", lost);
    cr_assert_gt(seq, 0, "KILN_DONE has no jobs.done of %s", lost);
    jsErrCode jerr = 0;
    cr_assert_eq(js_DeleteMsg(n.js, "KILN_DONE", seq, NULL, &jerr), NATS_OK, "delete: jerr %d", (int)jerr);
    uint64_t ev_seqs[RES_EVENTS_MAX];
    char ev_keys[RES_EVENTS_MAX][160];
    int nev = res_job_event_list(n.js, lost, ev_seqs, ev_keys);
    cr_assert_eq(nev, 2, "the slow job has %d events on its subject, want processing and completed", nev);
    cr_assert(strstr(ev_keys[0], ".processing.") != NULL && strstr(ev_keys[1], ".completed.") != NULL,
              "events %s, %s", ev_keys[0], ev_keys[1]);
    for (int i = 0; i < nev; i++)
        cr_assert_eq(js_DeleteMsg(n.js, "KILN_EVENTS", ev_seqs[i], NULL, &jerr), NATS_OK, "delete event: jerr %d", (int)jerr);
    int64_t kept_events = res_job_events(n.js, kept);
    h_nats_free(&n);
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after nats-server came back");

    h_nats_open(&s, &n);
    h_expect_done_once(&n, lost, "completed", 20000);
    /* at least the slow job's jobs.done and two events (the other job's go
     * too when they were confirmed within the store's last 0.5 s) */
    cr_expect(h_wait_metric_above(&s, H_STORE, "kiln_store_announcements_rechecked_total", 2, 10000),
              "the store did not check the slow job's announcements");
    cr_expect_eq(h_metric(&s, H_STORE, "kiln_store_done_reannounced_total"), 1);
    cr_expect_eq(h_metric(&s, H_STORE, "kiln_store_events_reannounced_total"), 1);
    cr_expect(h_log_contains(&s, H_STORE, "jobs.done lost by nats-server"));
    nev = res_job_event_list(n.js, lost, ev_seqs, ev_keys);
    cr_expect_eq(nev, 1, "the slow job has %d events on its subject after the restart, want 1", nev);
    if (nev >= 1) cr_expect(strstr(ev_keys[nev - 1], ".completed.") != NULL, "its last event is %s", ev_keys[nev - 1]);
    cr_expect_eq(h_done_count(n.js, kept, NULL, 0), 1, "the surviving jobs.done was announced again");
    cr_expect_eq(h_collect_wait(n.done, kept, 0, 0), 0, "subscribers got the surviving jobs.done again");
    cr_expect_eq(res_job_events(n.js, kept), kept_events, "the surviving job's events changed");
    h_nats_free(&n);
    h_stop(&s);
}

/* The EventBatches of first events in KILN_EVENTS (subjects ending in
 * ".$new"): their sequences, and how many of them hold each of ids. */
typedef struct {
    const char *ids[2];
    int holds[2];
    uint64_t seqs[RES_EVENTS_MAX];
    int n;
} res_first_arg;

static void res_first_one(natsMsg *m, void *arg)
{
    res_first_arg *a = arg;
    const char *subj = natsMsg_GetSubject(m);
    size_t sl = strlen(subj);
    if (sl < 5 || strcmp(subj + sl - 5, ".$new") != 0) return;
    if (a->n < RES_EVENTS_MAX) a->seqs[a->n++] = natsMsg_GetSequence(m);
    Kiln__V1__EventBatch *b = kiln__v1__event_batch__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                             (const uint8_t *)natsMsg_GetData(m));
    cr_assert_not_null(b, "a first-event batch (seq %llu) does not decode",
                       (unsigned long long)natsMsg_GetSequence(m));
    for (size_t i = 0; i < b->n_records; i++) {
        Kiln__V1__JobRecord *r = kiln__v1__job_record__unpack(NULL, b->records[i].len, b->records[i].data);
        for (int k = 0; k < 2 && r != NULL && r->request != NULL && r->request->id != NULL; k++)
            if (strcmp(r->request->id, a->ids[k]) == 0) a->holds[k]++;
        kiln__v1__job_record__free_unpacked(r, NULL);
    }
    kiln__v1__event_batch__free_unpacked(b, NULL);
}

static void res_first_scan(jsCtx *js, res_first_arg *a)
{
    a->n = 0;
    a->holds[0] = a->holds[1] = 0;
    cr_assert_geq(h_stream_scan(js, "KILN_EVENTS", res_first_one, a), 0, "KILN_EVENTS could not be read");
}

typedef struct {
    jsCtx *js;
    res_first_arg *first;
    const char *cancelled; /* a job whose cancelled event must be there too; NULL: none */
} res_first_wait_arg;

/* h_wait_for: both jobs' first events are out (and the cancelled one's end). */
static int res_first_events_out(void *arg)
{
    res_first_wait_arg *w = arg;
    res_first_scan(w->js, w->first);
    if (w->first->holds[0] < 1 || w->first->holds[1] < 1) return 0;
    uint64_t seqs[RES_EVENTS_MAX];
    char keys[RES_EVENTS_MAX][160];
    int nev = res_job_event_list(w->js, w->cancelled, seqs, keys);
    return nev >= 1 && strstr(keys[nev - 1], ".cancelled.") != NULL;
}

/* h_wait_for: a first-event batch holds the first job again. */
static int res_first_event_back(void *arg)
{
    res_first_wait_arg *w = arg;
    res_first_scan(w->js, w->first);
    return w->first->holds[0] >= 1;
}

/* The same loss for first events, which the store sends per user in
 * EventBatches on kiln.events.<user>.$new: a lost batch goes again with
 * the jobs that are still pending, and without a job that moved on (here:
 * cancelled), whose first event must not follow its cancelled one. */
Test(resilience, first_events_nats_server_lost_after_confirming_them_are_published_again)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1}; /* the jobs stay pending */
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char waiting[65], cancelled[65];
    /* Submitted and cancelled together: the first events and the cancelled
     * one are confirmed within the store's last 0.5 s of publishing. */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "waiting wren", waiting), 202);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "cancelled wren", cancelled), 202);
    h_expect_job(&s, H_TOKEN_ALICE, cancelled, "pending", 0, 10000, "the job to cancel");
    h_resp r;
    cr_assert_eq(h_job_post(&s, &r, H_TOKEN_ALICE, cancelled, "cancel"), 200);
    h_resp_free(&r);

    res_first_arg first = {.ids = {waiting, cancelled}};
    res_first_wait_arg w = {n.js, &first, cancelled};
    cr_assert(h_wait_for(res_first_events_out, &w, 10000, 50),
              "first events out for %d/%d jobs, or no cancelled event", first.holds[0], first.holds[1]);
    jsErrCode jerr = 0;
    for (int i = 0; i < first.n; i++)
        cr_assert_eq(js_DeleteMsg(n.js, "KILN_EVENTS", first.seqs[i], NULL, &jerr), NATS_OK, "delete: jerr %d",
                     (int)jerr);
    h_nats_free(&n);
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after nats-server came back");

    h_nats_open(&s, &n);
    w.js = n.js;
    cr_expect(h_wait_for(res_first_event_back, &w, 15000, 50), "the waiting job's first event was not published again");
    cr_expect_eq(first.holds[1], 0, "the cancelled job's first event was published again, after its cancelled one");
    uint64_t seqs[RES_EVENTS_MAX];
    char keys[RES_EVENTS_MAX][160];
    int nev = res_job_event_list(n.js, cancelled, seqs, keys);
    cr_expect(nev >= 1 && strstr(keys[nev - 1], ".cancelled.") != NULL, "the cancelled job's last event changed");
    cr_expect_eq(h_metric(&s, H_STORE, "kiln_store_events_reannounced_total"), 1);
    cr_expect(h_log_contains(&s, H_STORE, "first events lost by nats-server"));
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    jsCtx *js;
    const char *id;
} res_job_arg;

/* h_wait_for: the job's message is no longer in KILN_JOBS (every durable acked it). */
static int res_jobs_msg_gone(void *arg)
{
    const res_job_arg *a = arg;
    return res_seq_of(a->js, "KILN_JOBS", "Nats-Msg-Id", a->id) == 0;
}

/* h_wait_for: every thread of process *arg is stopped (SIGSTOP takes each
 * thread at its next scheduling point, after kill() returned). */
static int res_all_threads_stopped(void *arg)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)*(pid_t *)arg);
    DIR *d = opendir(path);
    if (d == NULL) return 0;
    int all = 1;
    struct dirent *e;
    while (all && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char stat_path[sizeof path + 256 + 8], buf[512];
        snprintf(stat_path, sizeof stat_path, "%s/%s/stat", path, e->d_name);
        FILE *f = fopen(stat_path, "r");
        if (f == NULL) continue; /* a thread that ended */
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *paren = strrchr(buf, ')'); /* "pid (comm) S ..." */
        all = paren != NULL && (paren[2] == 'T' || paren[2] == 't');
    }
    closedir(d);
    return all;
}

/* Freezes the stack's process c and waits until all its threads are stopped. */
static void res_freeze(h_stack *s, h_comp c)
{
    pid_t pid = s->procs[c].pid;
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    cr_assert(h_wait_for(res_all_threads_stopped, &pid, 5000, 5), "process %d did not stop", (int)pid);
}

/* No pull request waits on durable: frozen processes' requests have
 * expired, so nats-server puts no new message into their sockets. */
static int res_no_pull_waiting(void *arg)
{
    const res_job_arg *a = arg; /* id: the durable */
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, a->js, "KILN_JOBS", a->id, NULL, &jerr) != NATS_OK) return 0;
    int none = ci->NumWaiting == 0;
    jsConsumerInfo_Destroy(ci);
    return none;
}

/* Freezes the store and the consumer so that neither reads what is submitted
 * next: once stopped, until their open pull requests have expired (else
 * nats-server would put the job into a frozen process's socket, which reads
 * it after the thaw, and the job would not be lost). */
static void res_freeze_readers(h_stack *s, h_nats *n)
{
    res_freeze(s, H_STORE);
    res_freeze(s, H_CONSUMER);
    const char *durables[] = {"kiln-store", "kiln-worker-normal"};
    for (int i = 0; i < 2; i++) {
        res_job_arg d = {n->js, durables[i]};
        cr_assert(h_wait_for(res_no_pull_waiting, &d, 30000, 100), "pull requests of %s never expired",
                  durables[i]);
    }
}

/* Deletes each job's message from KILN_JOBS: nats-server's loss of it. */
static void res_delete_submits(h_nats *n, const char *const *ids, int nids)
{
    for (int i = 0; i < nids; i++) {
        uint64_t seq = res_seq_of(n->js, "KILN_JOBS", "Nats-Msg-Id", ids[i]);
        cr_assert_gt(seq, 0, "KILN_JOBS has no message of %s", ids[i]);
        jsErrCode jerr = 0;
        cr_assert_eq(js_DeleteMsg(n->js, "KILN_JOBS", seq, NULL, &jerr), NATS_OK, "delete: jerr %d", (int)jerr);
    }
}

/* Restarts nats-server (SIGTERM: it exits non-zero, not a Kiln failure) and
 * waits until component c logged the reconnect of each of its nconns
 * connections. */
static void res_restart_nats_seen_by(h_stack *s, h_comp c, int nconns)
{
    int before = h_log_count(s, c, "nats reconnected");
    h_proc_term(s, H_NATS);
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
    int64_t until = h_now_ms() + 15000;
    while (h_log_count(s, c, "nats reconnected") < before + nconns && h_now_ms() < until) usleep(20000);
    cr_assert_geq(h_log_count(s, c, "nats reconnected"), before + nconns, "%s did not reconnect",
                  s->procs[c].name);
}

/* The loss of confirmed submits in a nats-server crash, made on purpose:
 * with the store and consumer frozen (res_freeze_readers), deletes each
 * job's message from KILN_JOBS, restarts nats-server, thaws both, and
 * opens n again once the stack is ready. */
static void res_lose_submits(h_stack *s, h_nats *n, const char *const *ids, int nids)
{
    res_delete_submits(n, ids, nids);
    h_nats_free(n);
    h_proc_term(s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
    cr_assert_eq(kill(s->procs[H_STORE].pid, SIGCONT), 0);
    cr_assert_eq(kill(s->procs[H_CONSUMER].pid, SIGCONT), 0);
    cr_assert_eq(h_stack_wait_ready(s), 0, "not ready after nats-server came back");
    h_nats_open(s, n);
}

/* The same loss for a submit: the gateway answered 202, and the restarted
 * nats-server no longer has the job, which neither the store nor a consumer
 * had read. The test makes that state by freezing both (SIGSTOP), submitting,
 * deleting the job's message and restarting nats-server. The gateway must
 * publish the job again, and it must run once. A job whose message survived,
 * and one whose message was consumed before (gone from the stream, known to
 * the store), must not be published again. */
Test(resilience, a_submit_nats_server_lost_after_confirming_it_is_published_again)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char done[65], kept[65], lost[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "done egret", done), 202);
    cr_assert_geq(h_collect_wait(n.done, done, 1, 20000), 1, "no jobs.done for %s", done);
    res_job_arg gone = {n.js, done};
    cr_assert(h_wait_for(res_jobs_msg_gone, &gone, 10000, 50), "the consumed job's message stayed in KILN_JOBS");
    res_freeze_readers(&s, &n);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "kept egret", kept), 202);
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "lost egret", lost), 202);

    const char *lost_ids[] = {lost};
    res_lose_submits(&s, &n, lost_ids, 1);
    res_expect_completed_once(&s, &n, lost, 1, 30000);
    res_expect_completed_once(&s, &n, kept, 1, 30000);
    /* the two frozen ones at least (the consumed one too when it was
     * confirmed within the gateway's last 0.5 s of submitting) */
    cr_expect(h_wait_metric_above(&s, H_GATEWAY, "kiln_gateway_submits_rechecked_total", 1, 10000),
              "the gateway did not check the submits");
    cr_expect_eq(h_metric(&s, H_GATEWAY, "kiln_gateway_submits_republished_total"), 1);
    cr_expect(h_log_contains(&s, H_GATEWAY, "submit lost by nats-server"));
    cr_expect_eq(h_done_count(n.js, done, NULL, 0), 1, "the consumed job ran again");
    h_nats_free(&n);
    h_stop(&s);
}

/* The gateway's side of chaos run 2329: it answered 202 for a submit that
 * the restarted nats-server lost, and it is told to stop right after the
 * reconnect, while its check of that submit still waits for the (frozen)
 * store. A 202 means the job is kept: the stopping gateway must finish the
 * check and publish the job again. */
Test(resilience, a_gateway_stopped_right_after_a_reconnect_still_publishes_a_lost_submit)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    res_freeze_readers(&s, &n);
    char lost[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "lost at a stop egret", lost), 202);
    const char *lost_ids[] = {lost};
    res_delete_submits(&n, lost_ids, 1);
    h_nats_free(&n);
    res_restart_nats_seen_by(&s, H_GATEWAY, 4); /* submit, fast submit, events, query */
    cr_assert_eq(kill(s.procs[H_GATEWAY].pid, SIGTERM), 0);
    cr_assert(h_wait_log(&s, H_GATEWAY, "shutting down", 5000), "the gateway did not take the SIGTERM");
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    cr_assert_eq(kill(s.procs[H_CONSUMER].pid, SIGCONT), 0);
    cr_expect_eq(h_proc_term(&s, H_GATEWAY), 0, "the gateway did not stop cleanly");
    cr_expect(h_log_contains(&s, H_GATEWAY, "submit lost by nats-server"),
              "the stopping gateway did not publish the lost submit again");

    cr_assert_eq(h_proc_start(&s, H_GATEWAY), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after the gateway came back");
    h_nats_open(&s, &n);
    res_expect_completed_once(&s, &n, lost, 1, 30000);
    h_nats_free(&n);
    h_stop(&s);
}

/* A submit whose JetStream ack never comes: nats-server frozen after it
 * read nothing of the publish, then killed and started again. The gateway
 * must answer 503 once KILN_PUBLISH_TIMEOUT has passed (not hang, not
 * earlier), count nothing as unacknowledged once it has given up on that
 * publish and NATS is back, and accept submits again. */
Test(resilience, a_submit_whose_ack_never_comes_is_answered_503_and_given_up)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_PUBLISH_TIMEOUT=1s", NULL}};
    h_start(&s, &o);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "before the freeze", id), 202);
    res_freeze(&s, H_NATS);
    int64_t t0 = h_now_ms();
    long st = h_submit_prompt(&s, H_TOKEN_ALICE, "never acknowledged", id);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(st, 503, "a submit without an ack answered %ld", st);
    cr_expect(took >= 900 && took <= 4000, "the 503 came after %lld ms (KILN_PUBLISH_TIMEOUT 1 s)",
              (long long)took);
    cr_assert_eq(h_proc_kill9(&s, H_NATS), 0);
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after nats-server came back");
    cr_expect(h_wait_metric_eq(&s, H_GATEWAY, "kiln_gateway_submits_unacked", 0, 10000),
              "the gateway still counts %g submit(s) unacknowledged",
              h_metric(&s, H_GATEWAY, "kiln_gateway_submits_unacked"));
    cr_expect_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "after the restart", id), 202);
    h_stop(&s);
}

/* Submits a job of "alice" (the gateway token's user) through the client
 * library, synchronously or not, and cr_asserts it was accepted. */
static void res_library_send(kiln_client *c, const char *prompt, bool async, char id[65])
{
    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    spec.user_id = "alice";
    spec.prompt = prompt;
    char err[256] = "";
    kiln_status st = async ? kiln_client_submit_async(c, &spec, id, 65, err, sizeof err)
                           : kiln_client_submit(c, &spec, id, 65, err, sizeof err);
    cr_assert_eq(st, KILN_OK, "submit: %s", err);
}

/* res_library_send, and for an async submit its ack awaited. */
static void res_library_submit(kiln_client *c, const char *prompt, bool async, char id[65])
{
    res_library_send(c, prompt, async, id);
    if (!async) return;
    uint64_t failed = 0;
    cr_assert_eq(kiln_client_flush(c, 10000, &failed), KILN_OK);
    cr_assert_eq(failed, 0, "the async submit was not confirmed");
}

/* An async library submit whose ack never comes (nats-server frozen, then
 * killed and started again while the client stays connected): a flush
 * without a time limit must count it as failed once no ack came for 30 s,
 * not wait for good, and later submits must work. */
Test(resilience, a_library_async_submit_without_an_ack_counts_as_failed, .timeout = 120)
{
    h_stack s;
    h_start(&s, NULL);
    kiln_client *c = NULL;
    cr_assert_eq(kiln_client_connect(s.nats_url, &c), KILN_OK);
    char id[65];
    res_freeze(&s, H_NATS);
    res_library_send(c, "unacknowledged library wren", true, id);
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_proc_kill9(&s, H_NATS), 0);
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    uint64_t failed = 0;
    kiln_status st = kiln_client_flush(c, 0, &failed);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(st, KILN_OK, "flush: %s", kiln_status_str(st));
    cr_expect_eq(failed, 1, "the unacknowledged submit counted %llu failures", (unsigned long long)failed);
    cr_expect(took >= 29000 && took <= 45000, "the flush ended after %lld ms (30 s without an ack)",
              (long long)took);
    res_library_submit(c, "acknowledged library wren", true, id); /* after the restart */
    kiln_client_destroy(c);
    h_stop(&s);
}

/* With the consumer frozen after its calls ended: freezes nats-server,
 * thaws the consumer, waits until published(s) shows its publish went into
 * the frozen server, then kills nats-server and starts it again. The
 * consumer must give that publish's jobs up within 5 s of the restart. */
static void res_consumer_publish_lost(h_stack *s, int (*published)(void *), const char *what)
{
    res_freeze(s, H_NATS);
    cr_assert_eq(kill(s->procs[H_CONSUMER].pid, SIGCONT), 0);
    cr_assert(h_wait_for(published, s, 10000, 20), "the consumer did not publish %s", what);
    cr_assert_eq(h_proc_kill9(s, H_NATS), 0);
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
    cr_assert_eq(h_stack_wait_ready(s), 0, "not ready after nats-server came back");
    cr_expect(h_wait_log(s, H_CONSUMER, "publish ack lost in a reconnect, publishing again", 5000),
              "the consumer did not publish %s again within 5 s of the restart", what);
}

/* The consumer let go of the publish nats.c still counted as unacked: it
 * stops at once (one that kept it waited 5 s for its ack at every stop). */
static void res_expect_consumer_let_go(h_stack *s)
{
    cr_expect(h_wait_log(s, H_CONSUMER, "publishes never acknowledged dropped", 10000),
              "the consumer kept the publish whose ack never came");
    int64_t t0 = h_now_ms();
    cr_expect_eq(h_proc_term(s, H_CONSUMER), 0);
    int64_t took = h_now_ms() - t0;
    cr_expect(took < 4000, "the consumer took %lld ms to stop (waiting for an ack that cannot come?)",
              (long long)took);
}

static int res_batch_published(void *arg)
{
    return h_metric(arg, H_CONSUMER, "kiln_consumer_transition_batches_total") > 0;
}

static int res_dead_letter_published(void *arg)
{
    return h_log_contains(arg, H_CONSUMER, "dead letter job=");
}

/* How many letters KILN_DEAD holds for job id (-1 when it cannot be read):
 * the stream, since the letter can go out before a subscriber is there. */
static int res_dead_letters_of(h_stack *s, const char *id)
{
    kiln_client *c = NULL;
    kiln_dead_letter *l = NULL;
    size_t n = 0;
    uint64_t next = 0;
    int count = -1;
    if (kiln_client_connect(s->nats_url, &c) == KILN_OK &&
        kiln_client_dead_list(c, 0, 1000, &l, &n, &next) == KILN_OK) {
        count = 0;
        for (size_t i = 0; i < n; i++) count += strcmp(l[i].job_id, id) == 0;
    }
    kiln_dead_letters_free(l, n);
    kiln_client_destroy(c);
    return count;
}

/* A result whose publish nats-server takes but never acknowledges, with no
 * disconnect to tell (nats-server frozen): after 10 s the consumer gives
 * the job up, which frees its slot while the server is still frozen, and
 * once the server runs again the job ends once, from that one call (the
 * late ack finds its job gone; the redelivered copy finds it finished). */
Test(resilience, a_result_whose_publish_ack_never_comes_is_given_up_and_its_job_ends_once, .timeout = 180)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_ACK_WAIT=3s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=1500 overdue owl", id), 202);
    cr_assert(h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 1, 20000),
              "the call never reached the provider");
    res_freeze(&s, H_NATS);
    int64_t frozen_at = h_now_ms();
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total", 0, 10000),
              "the provider did not answer");
    int gave_up = h_wait_log(&s, H_CONSUMER, "reason=\"publish ack overdue\"", 20000);
    /* (The slot goes just after the log line.) */
    int freed = h_wait_metric_eq(&s, H_CONSUMER, "kiln_consumer_in_flight", 0, 3000);
    int64_t frozen_ms = h_now_ms() - frozen_at;
    cr_assert_eq(kill(s.procs[H_NATS].pid, SIGCONT), 0);
    cr_expect(gave_up, "the consumer never gave up the result nats-server did not acknowledge");
    cr_expect(freed, "the job held its slot after %lld ms with its result unacknowledged", (long long)frozen_ms);

    res_expect_completed_once(&s, &n, id, 1, 60000);
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), 1,
                 "the given-up job was called again");
    h_nats_free(&n);
    h_stop(&s);
}

/* The same for a consumer's transitions: two calls end while the consumer
 * is frozen; nats-server is frozen, the consumer thawed publishes both
 * results as one TransitionBatch into a server that never reads it, and
 * nats-server is killed and started again. The consumer must publish the
 * results again soon after it reconnected (the ack went with the old
 * server; once, it waited out the publish's 10 s), and the jobs complete
 * without a second provider call (chaos run 2602: before, it gave the jobs
 * up and they ran again, 12 calls in one run), and it must let go of the
 * publish nats.c still counts as unacked: a consumer that kept it waited
 * for its ack at every stop (5 s). */
Test(resilience, a_transition_whose_ack_a_restart_lost_is_published_again_without_a_second_call,
     .timeout = 180)
{
    enum { NJOBS = 2 };
    h_stack s;
    /* One transfer thread: both results are taken in one round. */
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_ACK_WAIT=3s", NULL},
                      .consumer_env = {"KILN_TRANSFER_THREADS=1", NULL}};
    h_start(&s, &o);
    char ids[NJOBS][65];
    h_submit_each(&s, H_TOKEN_ALICE, "{\"prompt\":\"!sleep=1500 unacked otter %d\"}", NJOBS, ids);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    cr_assert(h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", NJOBS, 20000),
              "the calls never reached the provider");
    res_freeze(&s, H_CONSUMER);
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total", NJOBS - 1, 10000) &&
                  h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 0, 10000),
              "the provider did not answer");
    double calls = h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total");
    res_consumer_publish_lost(&s, res_batch_published, "the results' TransitionBatch");

    h_nats n;
    h_nats_open(&s, &n);
    for (int i = 0; i < NJOBS; i++) res_expect_completed_once(&s, &n, ids[i], 1, 60000);
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), calls,
                 "a job whose result was published again was called again");
    cr_expect_eq(h_metric(&s, H_CONSUMER, "kiln_consumer_publishes_resent_total"), NJOBS);
    res_expect_consumer_let_go(&s);
    h_nats_free(&n);
    h_stop(&s);
}

/* The same for a dead letter: a job's only attempt fails while the consumer
 * is frozen, nats-server is frozen, and the thawed consumer publishes the
 * job's dead letter into it; nats-server is killed and started again. The
 * consumer must publish the dead letter again soon after it reconnected,
 * end the job `failed` without calling the provider again, with one dead
 * letter, and let go of the lost publish. */
Test(resilience, a_dead_letter_whose_ack_a_restart_lost_is_published_again, .timeout = 180)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1, .env = {"KILN_ACK_WAIT=3s", NULL}};
    h_start(&s, &o);
    char id[65];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE,
                          "{\"prompt\":\"!sleep=1500 !fail=500 an unacked letter\",\"max_attempts\":1}", id),
                 202);
    cr_assert_eq(h_proc_start(&s, H_CONSUMER), 0);
    cr_assert(h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 1, 20000),
              "the call never reached the provider");
    res_freeze(&s, H_CONSUMER);
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, "kiln_devprovider_faults_fail_total", 0, 10000) &&
                  h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 0, 10000),
              "the provider did not answer");
    double calls = h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_faults_fail_total");
    res_consumer_publish_lost(&s, res_dead_letter_published, "the dead letter");

    h_expect_job(&s, H_TOKEN_ALICE, id, "failed", 1, 60000, "the job whose dead letter was lost");
    cr_expect_eq(res_dead_letters_of(&s, id), 1, "KILN_DEAD does not hold one letter for job %s", id);
    cr_expect_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_faults_fail_total"), calls,
                 "the job whose dead letter was published again was called again");
    res_expect_consumer_let_go(&s);
    h_stop(&s);
}

/* The same loss for jobs other services submit through the client library
 * (kiln_client_submit and kiln_client_submit_async), which stays connected
 * across the nats-server restart: it must publish the lost ones again. */
Test(resilience, a_library_submit_nats_server_lost_after_confirming_it_is_published_again)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    kiln_client *c = NULL;
    cr_assert_eq(kiln_client_connect(s.nats_url, &c), KILN_OK);
    char kept[65], lost_sync[65], lost_async[65];
    res_freeze_readers(&s, &n);
    res_library_submit(c, "kept library heron", false, kept);
    res_library_submit(c, "lost library heron", false, lost_sync);
    res_library_submit(c, "lost async library heron", true, lost_async);

    const char *lost_ids[] = {lost_sync, lost_async};
    res_lose_submits(&s, &n, lost_ids, 2);
    res_expect_completed_once(&s, &n, lost_sync, 1, 30000);
    res_expect_completed_once(&s, &n, lost_async, 1, 30000);
    res_expect_completed_once(&s, &n, kept, 1, 30000);
    kiln_client_destroy(c);
    h_nats_free(&n);
    h_stop(&s);
}

typedef struct {
    jsCtx *js;
    uint64_t seq;
} res_delivered_arg;

/* h_wait_for: the store's durable has delivered stream sequence seq. */
static int res_store_delivered(void *arg)
{
    const res_delivered_arg *a = arg;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, a->js, "KILN_JOBS", "kiln-store", NULL, &jerr) != NATS_OK) return 0;
    int done = ci->Delivered.Stream >= a->seq;
    jsConsumerInfo_Destroy(ci);
    return done;
}

/* With the store frozen and its messages up to seq delivered to it:
 * nats-server is frozen, the store thawed applies them and publishes what
 * they announce into a server that never reads it (it writes first: the
 * applied sequence moves before the publishes), then nats-server is killed
 * and started again. Closes the test's own connection (nc, js) first. */
static void res_store_publishes_into_a_dying_server(h_stack *s, natsConnection *nc, jsCtx *js,
                                                    uint64_t seq)
{
    res_freeze(s, H_NATS);
    cr_assert_eq(kill(s->procs[H_STORE].pid, SIGCONT), 0);
    cr_assert(h_wait_metric_above(s, H_STORE, "kiln_store_applied_seq", (double)seq - 1, 5000),
              "the store did not apply the job");
    h_nats_close(nc, js);
    cr_assert_eq(h_proc_kill9(s, H_NATS), 0);
    cr_assert_eq(h_proc_start(s, H_NATS), 0);
}

/* A store paused (here SIGSTOP; a stalled VM, a throttled container) while
 * nats-server dies comes back with publishes whose acks will never come:
 * the server that got them is gone. nats.c kept them pending for good, every
 * later wait for the store's publish acks timed out, and the store applied
 * nothing until it was restarted (chaos run 616). The test makes that state
 * for sure: with the store frozen, a job is delivered to it; nats-server is
 * frozen too; the store, thawed, applies the job and publishes its event,
 * which nobody acks; nats-server is killed and started again. Every job
 * submitted after must still end and be announced. */
Test(resilience, a_store_whose_publish_acks_never_come_goes_on)
{
    h_stack s;
    h_start(&s, NULL);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    /* The store's long poll must be open when it freezes, or the job is not
     * delivered to it: then it is thawed, let apply that job, and the next
     * try takes a new one. */
    int delivered = 0;
    res_delivered_arg d = {js, 0};
    for (int attempt = 0; attempt < 10 && !delivered; attempt++) {
        char id[65];
        h_unique_id(id, "unacked");
        Kiln__V1__JobRequest req = KILN__V1__JOB_REQUEST__INIT;
        req.id = id;
        req.user_id = "alice";
        req.prompt = "unacked heron";
        res_freeze(&s, H_STORE);
        cr_assert_eq(h_publish_request(js, "jobs.generate", &req, 0, &d.seq), 0);
        delivered = h_wait_for(res_store_delivered, &d, 200, 10);
        if (delivered) break;
        cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
        cr_assert(h_wait_metric_above(&s, H_STORE, "kiln_store_applied_seq", (double)d.seq - 1, 5000));
    }
    cr_assert(delivered, "no job reached the frozen store in 10 tries");
    res_store_publishes_into_a_dying_server(&s, nc, js, d.seq);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after nats-server came back");

    h_nats n;
    h_nats_open(&s, &n);
    enum { NJOBS = 5 };
    char ids[NJOBS][65];
    for (int i = 0; i < NJOBS; i++) {
        h_unique_id(ids[i], "after");
        cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", ids[i], "alice", "after heron"), 0);
    }
    for (int i = 0; i < NJOBS; i++)
        cr_expect_geq(h_collect_wait(n.done, ids[i], 1, 30000), 1, "job %d after the outage was never announced", i);
    h_nats_free(&n);
    h_stop(&s);
}

/* KILN_JOBS's last sequence, 0 when it cannot be read. */
static uint64_t res_jobs_last_seq(jsCtx *js)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, js, "KILN_JOBS", NULL, &jerr) != NATS_OK) return 0;
    uint64_t last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return last;
}

/* h_wait_for: KILN_DONE holds the job's jobs.done (arg: a res_job_arg). */
static int res_done_published(void *arg)
{
    const res_job_arg *a = arg;
    return h_done_count(a->js, a->id, NULL, 0) >= 1;
}

/* Publishes the COMPLETED transition a consumer would publish for id. */
static void res_publish_completed(jsCtx *js, const char *id)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    h_pack_completed(id, "unannounced heron", 100, &buf, &len);
    int rc = h_js_publish(js, "kiln.tx", buf, (int)len, NULL);
    free(buf);
    cr_assert_eq(rc, 0, "transition not published");
}

/* Starts a stack without a consumer and leaves it in chaos run 903's
 * state: the store frozen with a `completed` transition of a new job of
 * alice's delivered to it, KILN_JOBS purged (the loss), then
 * res_store_publishes_into_a_dying_server. The job's id into id. */
static void res_start_with_an_unannounced_job(h_stack *s, char id[65])
{
    h_stack_opts o = {.no_consumer = 1};
    h_start(s, &o);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(s, &nc, &js), 0);
    int delivered = 0;
    res_delivered_arg d = {js, 0};
    /* As in a_store_whose_publish_acks_never_come_goes_on, the store's long
     * poll must be open when it freezes for the transition to reach it. */
    for (int attempt = 0; attempt < 10 && !delivered; attempt++) {
        cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, "unannounced heron", id), 202);
        cr_assert(h_wait_metric_above(s, H_STORE, "kiln_store_applied_seq",
                                      (double)res_jobs_last_seq(js) - 1, 10000),
                  "the store did not apply the job");
        res_freeze(s, H_STORE);
        res_publish_completed(js, id);
        d.seq = res_jobs_last_seq(js);
        cr_assert_gt(d.seq, 0, "KILN_JOBS unreadable");
        delivered = h_wait_for(res_store_delivered, &d, 200, 10);
        if (delivered) break;
        cr_assert_eq(kill(s->procs[H_STORE].pid, SIGCONT), 0);
    }
    cr_assert(delivered, "the transition did not reach the frozen store in 10 tries");
    jsErrCode jerr = 0;
    cr_assert_eq(js_PurgeStream(js, "KILN_JOBS", NULL, &jerr), NATS_OK, "purge: jerr=%d", (int)jerr);
    cr_assert_eq(h_done_count(js, id, NULL, 0), 0, "jobs.done already published");
    res_store_publishes_into_a_dying_server(s, nc, js, d.seq);
}

/* KILN_DONE holds id's jobs.done within 10 s. */
static void res_expect_announced(h_stack *s, const char *id)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(s, &nc, &js), 0);
    res_job_arg a = {js, id};
    cr_expect(h_wait_for(res_done_published, &a, 10000, 50),
              "job %s is completed, and its jobs.done was never published", id);
    h_nats_close(nc, js);
}

/* Chaos run 903: a job's `completed` transition was confirmed to the
 * consumer ~30 ms before a nats-server SIGKILL, the store wrote it and
 * published its jobs.done into the dying server, and the restarted server
 * had lost the transition. 0.6 s after the reconnect the store was stopped:
 * it waited 1 s for the acks that would never come, dropped the publishes
 * and left the batch to a redelivery, which, the message being gone, never
 * came. The job stayed completed and unannounced. The test makes that state:
 * the store frozen with the job's messages delivered to it, KILN_JOBS purged
 * (the loss), nats-server frozen while the thawed store publishes into it,
 * then killed and started again, and the store stopped at once. Its
 * jobs.done must be in KILN_DONE. */
Test(resilience, a_store_stopped_with_unconfirmed_announcements_publishes_them_first)
{
    h_stack s;
    char id[65] = "";
    res_start_with_an_unannounced_job(&s, id);
    cr_assert_eq(h_proc_term(&s, H_STORE), 0, "the store did not stop cleanly");
    cr_expect(h_log_contains(&s, H_STORE, "jobs.done/events published again"),
              "the store did not publish its announcements again (after the reconnect or as it stopped)");
    res_expect_announced(&s, id);
    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after the store came back");
    h_stop(&s);
}

/* Chaos run 2014: the same, but the store was SIGKILLed right after the
 * reconnect, before its publishes were taken back and sent again, and
 * nothing was left to announce the job. The restarted store must announce
 * what the dead one wrote and did not see confirmed. */
Test(resilience, a_store_killed_with_unconfirmed_announcements_publishes_them_when_it_starts)
{
    h_stack s;
    char id[65] = "";
    res_start_with_an_unannounced_job(&s, id);
    cr_assert_eq(h_proc_kill9(&s, H_STORE), 0);
    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after the store came back");
    res_expect_announced(&s, id);
    cr_expect(h_log_contains(&s, H_STORE, "jobs.done of the last run published again"),
              "the restarted store did not say it announced the last run's jobs");
    h_stop(&s);
}

typedef struct {
    jsCtx *js;
    int deleted;
} res_tx_delete_arg;

static void res_tx_delete_one(natsMsg *m, void *arg)
{
    res_tx_delete_arg *a = arg;
    jsErrCode jerr = 0;
    if (strcmp(natsMsg_GetSubject(m), "kiln.tx") == 0 &&
        js_DeleteMsg(a->js, "KILN_JOBS", natsMsg_GetSequence(m), NULL, &jerr) == NATS_OK)
        a->deleted++;
}

/* The loss of a consumer's confirmed transitions, made on purpose: with
 * the store frozen, the consumer completes a job of prompt (its transitions
 * confirmed, the job acked), and the job's transitions are deleted from
 * KILN_JOBS; each test then restarts nats-server its own way. n is closed.
 * Returns the dev provider's calls before the job. */
static double res_lose_transitions(h_stack *s, h_nats *n, const char *prompt, char *id)
{
    res_freeze(s, H_STORE);
    double calls0 = h_metric(s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total");
    cr_assert_geq(calls0, 0, "no kiln_devprovider_generations_ok_total");
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, prompt, id), 202);
    cr_assert(h_wait_worker_idle(n->js, "kiln-worker-normal", 20000), "the consumer did not finish the job");
    res_tx_delete_arg del = {n->js, 0};
    cr_assert_geq(h_stream_scan(n->js, "KILN_JOBS", res_tx_delete_one, &del), 0);
    cr_assert_geq(del.deleted, 1, "no transition of the job in KILN_JOBS");
    h_nats_free(n);
    return calls0;
}

/* After res_lose_transitions: the job completes once, with its one call. */
static void res_expect_one_call(h_stack *s, h_nats *n, const char *id, double calls0)
{
    h_nats_open(s, n);
    res_expect_completed_once(s, n, id, 1, 20000);
    cr_expect_eq(h_metric(s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), calls0 + 1,
                 "the job was called again");
}

/* The same loss for a consumer's transitions: it completed a job, its
 * `processing` and `completed` transitions were confirmed and it acked the
 * job, and the restarted nats-server has neither transition. The store
 * never saw them (frozen here), so before, the job stayed `pending` until
 * the sweep re-drove it: a second provider call. The test makes that state
 * by deleting the transitions and restarting nats-server; the consumer must
 * publish them again, and the job must complete with its one call. */
Test(resilience, a_transition_nats_server_lost_after_confirming_it_is_published_again)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    double calls0 = res_lose_transitions(&s, &n, "lost transition heron", id);
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    cr_assert_eq(h_stack_wait_ready(&s), 0, "not ready after nats-server came back");

    res_expect_one_call(&s, &n, id, calls0);
    cr_expect_geq(h_metric(&s, H_CONSUMER, "kiln_consumer_transitions_republished_total"), 1);
    cr_expect(h_log_contains(&s, H_CONSUMER, "transition lost by nats-server"));
    h_nats_free(&n);
    h_stop(&s);
}

/* Chaos run 2329: the same loss, and the consumer was told to stop 0.2 s
 * after the reconnect, while its check of the lost transition still waited
 * for the store. Its stop dropped the check: the job stayed `processing`
 * until the store's sweep took it as abandoned 90 s later and ran it again.
 * A stopping consumer must finish that check: here the store stays frozen
 * until the consumer was told to stop, and no consumer runs after it, so
 * only the stopped one can publish the transitions. With nats_down,
 * nats-server is gone again when the consumer is told to stop (a chaos run
 * stopped a consumer 0.2 s before its connection was back), and comes back
 * once the consumer took its check up: the consumer must wait for it. */
static void res_stop_consumer_after_lost_transition(const char *prompt, bool nats_down)
{
    h_stack s;
    h_start(&s, NULL);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65];
    double calls0 = res_lose_transitions(&s, &n, prompt, id);
    /* Both of the consumer's connections are back, so its check has begun
     * (it asks the frozen store, which cannot answer). */
    res_restart_nats_seen_by(&s, H_CONSUMER, 2);
    if (nats_down) h_proc_term(&s, H_NATS);
    cr_assert_eq(kill(s.procs[H_CONSUMER].pid, SIGTERM), 0);
    if (nats_down) {
        cr_assert(h_wait_log(&s, H_CONSUMER, "stopping, checking the publishes from before the reconnect", 10000),
                  "the stopping consumer did not take up its check");
        cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    } else {
        cr_assert(h_wait_log(&s, H_CONSUMER, "signal received", 5000), "the consumer did not take the SIGTERM");
    }
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    int64_t t0 = h_now_ms();
    cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "the consumer did not stop cleanly");
    if (!nats_down)
        cr_expect_lt(h_now_ms() - t0, 9000, "the consumer took %lld ms to stop", (long long)(h_now_ms() - t0));
    cr_expect(h_log_contains(&s, H_CONSUMER, "transition lost by nats-server"),
              "the stopping consumer did not %spublish the lost transition again",
              nats_down ? "wait for NATS and " : "");

    res_expect_one_call(&s, &n, id, calls0);
    h_nats_free(&n);
    h_stop(&s);
}

/* Chaos run 2916: a consumer told to stop while nats-server was down took
 * more than its drain and 5 s: the wait after the drain used its 5 s on a
 * result whose ack could not come, and the check of the transitions a
 * reconnect left then waited 5 s more for NATS. The test makes both waits:
 * a lost transition with the store frozen (the check pending once
 * nats-server restarted), a job whose call ends while nats-server is down
 * again (its result's ack cannot come), then the stop, with a 1 s drain.
 * The consumer must be gone within the drain and 5 s (and some for its
 * exit). */
Test(resilience, a_consumer_stopped_with_nats_down_and_checks_pending_stops_within_the_drain_and_5_s,
     .timeout = 180)
{
    h_stack s;
    h_stack_opts o = {.consumer_env = {"KILN_DRAIN_TIMEOUT=1s", NULL}};
    h_start(&s, &o);
    h_nats n;
    h_nats_open(&s, &n);
    char id[65], late[65];
    (void)res_lose_transitions(&s, &n, "stop bound egret", id);
    /* A call that outlasts both nats-server stops below; it starts before
     * the first, as right after a reconnect a new job waits for the
     * (frozen) store's word. */
    h_nats_open(&s, &n);
    double calls = h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total");
    h_unique_id(late, "stop-bound");
    cr_assert_eq(h_publish_jobreq(n.js, "jobs.generate", late, "alice", "!sleep=12000 a result into the void"), 0);
    h_nats_free(&n);
    cr_assert(h_wait_metric_eq(&s, H_DEVPROVIDER, "kiln_devprovider_requests_waiting", 1, 20000),
              "the late job's call never reached the provider");
    res_restart_nats_seen_by(&s, H_CONSUMER, 2); /* its check asks the frozen store */
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    cr_assert_eq(h_metric(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total"), calls,
                 "the late job's call ended before nats-server went (a slow machine?)");
    cr_assert(h_wait_metric_above(&s, H_DEVPROVIDER, "kiln_devprovider_generations_ok_total", calls, 20000),
              "the provider did not answer the late job");

    int64_t t0 = h_now_ms();
    cr_expect_eq(h_proc_term(&s, H_CONSUMER), 0, "the consumer did not stop cleanly");
    int64_t took = h_now_ms() - t0;
    cr_expect_lt(took, 1000 + 5000 + 1500, "the consumer took %lld ms to stop (drain 1 s, then at most 5 s)",
                 (long long)took);
    cr_expect(h_log_contains(&s, H_CONSUMER, "stopping with publishes from before the reconnect unchecked"),
              "the consumer did not have its check pending at the stop (nothing was tested)");
    /* The job whose transitions were lost is the sweep's now, a minute and more away: not waited for. */
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    cr_assert_eq(kill(s.procs[H_STORE].pid, SIGCONT), 0);
    h_stop(&s);
}

Test(resilience, a_consumer_stopped_right_after_a_reconnect_still_publishes_a_lost_transition)
{
    res_stop_consumer_after_lost_transition("lost transition at a stop egret", false);
}

Test(resilience, a_consumer_stopped_while_reconnecting_still_publishes_a_lost_transition)
{
    res_stop_consumer_after_lost_transition("lost transition while reconnecting egret", true);
}

/* Chaos run 3327: a store SIGTERMed while nats-server was down, after a
 * reconnect had left its announcements to check, took 1.6 s for its
 * periodic rounds, the donecheck's 5 s wait for NATS, then up to 5 s to
 * drain its query subscriptions, and the harness killed it at 10 s. The
 * test makes that state: a job's jobs.done is published, KILN_DONE is
 * deleted (so the check after the reconnect finds no answer and stays
 * pending), nats-server restarts, then stops, and the store is stopped.
 * It must be gone within the donecheck's 5 s and its rounds. */
Test(resilience, a_store_stopped_with_nats_down_and_checks_pending_stops_within_5_s_and_its_rounds)
{
    h_stack s;
    h_stack_opts o = {.no_consumer = 1};
    h_start(&s, &o);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0);
    char id[65];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "stop bound heron", id), 202);
    cr_assert(h_wait_metric_above(&s, H_STORE, "kiln_store_applied_seq", (double)res_jobs_last_seq(js) - 1, 10000),
              "the store did not apply the job");
    res_publish_completed(js, id);
    res_job_arg a = {js, id};
    cr_assert(h_wait_for(res_done_published, &a, 10000, 50), "the job's jobs.done was not published");
    jsErrCode jerr = 0;
    cr_assert_eq(js_DeleteStream(js, "KILN_DONE", NULL, &jerr), NATS_OK, "delete KILN_DONE: jerr=%d", (int)jerr);
    h_nats_close(nc, js);

    res_restart_nats_seen_by(&s, H_STORE, 2);
    h_proc_term(&s, H_NATS); /* nats-server exits non-zero on SIGTERM: not a Kiln failure */
    int64_t t0 = h_now_ms();
    cr_expect_eq(h_proc_term(&s, H_STORE), 0, "the store did not stop cleanly");
    int64_t took = h_now_ms() - t0;
    cr_expect_lt(took, 5000 + 3500, "the store took %lld ms to stop (the donecheck's 5 s, its rounds ~2 s)",
                 (long long)took);
    cr_expect(h_log_contains(&s, H_STORE, "stopping with publishes from before the reconnect unchecked"),
              "the store did not have its check pending at the stop (nothing was tested)");
    cr_assert_eq(h_proc_start(&s, H_NATS), 0);
    h_stop(&s);
}
