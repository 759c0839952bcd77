/* test_events.c - delivery semantics, live status: GET ?wait=N long-polls,
 * Server-Sent Events per job and per user (with Last-Event-ID resume), and
 * many idle waiters without a thread each in the gateway. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <criterion/criterion.h>
#include <curl/curl.h>

#include "../harness.h"
#include "subjects.h"

TestSuite(events, .fini = h_fini, .timeout = 120);

#define EV_MAX 256
#define EV_BUF_CAP (1u << 20)

typedef struct {
    char id[64];
    char type[32];
    char job_id[80];
    char status[32];
    int data_ok;            /* data was a JSON object */
} ev_event;

/* One SSE connection: raw text buffer, parsed events, stop condition. */
typedef struct {
    const char *url;
    const char *token;
    const char *last_event_id;  /* NULL: none */
    char stop_job[80];          /* stop after this job's terminal event; "": run until closed */
    int stop_after;             /* stop after this many events; 0: no limit */
    pthread_mutex_t lock;       /* guards stop_job (set by the test while the stream runs) */
    long timeout_ms;
    char *buf;
    size_t len, parsed;
    ev_event ev[EV_MAX];
    int nev;
    int stopped;                /* we stopped on the terminal event */
    volatile int connected;     /* response headers arrived */
    long http;
    CURLcode rc;
    char ctype[128];
} ev_sse;

static void ev_parse_block(ev_sse *c, const char *b, size_t n)
{
    if (c->nev >= EV_MAX) return;
    ev_event *e = &c->ev[c->nev];
    memset(e, 0, sizeof *e);
    char data[16384];
    size_t dl = 0;
    int any = 0;
    const char *p = b, *end = b + n;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t ll = eol != NULL ? (size_t)(eol - p) : (size_t)(end - p);
        if (ll > 0 && p[ll - 1] == '\r') ll--;
        if (ll > 0 && p[0] != ':') {
            const char *colon = memchr(p, ':', ll);
            size_t kl = colon != NULL ? (size_t)(colon - p) : ll;
            const char *v = colon != NULL ? colon + 1 : p + ll;
            if (v < p + ll && *v == ' ') v++;
            size_t vl = (size_t)(p + ll - v);
            if (kl == 2 && strncmp(p, "id", 2) == 0) {
                snprintf(e->id, sizeof e->id, "%.*s", (int)vl, v);
                any = 1;
            } else if (kl == 5 && strncmp(p, "event", 5) == 0) {
                snprintf(e->type, sizeof e->type, "%.*s", (int)vl, v);
                any = 1;
            } else if (kl == 4 && strncmp(p, "data", 4) == 0 && dl + vl + 2 < sizeof data) {
                if (dl > 0) data[dl++] = '\n';
                memcpy(data + dl, v, vl);
                dl += vl;
                any = 1;
            }
        }
        if (eol == NULL) break;
        p = eol + 1;
    }
    if (!any) return; /* comment / keep-alive only */
    json_t *o = json_loadb(data, dl, 0, NULL);
    if (json_is_object(o)) {
        e->data_ok = 1;
        snprintf(e->job_id, sizeof e->job_id, "%s", h_jstr(o, "id") != NULL ? h_jstr(o, "id") : "");
        snprintf(e->status, sizeof e->status, "%s", h_jstr(o, "status") != NULL ? h_jstr(o, "status") : "");
    }
    json_decref(o);
    c->nev++;
    pthread_mutex_lock(&c->lock);
    if (c->stop_job[0] != '\0' && strcmp(e->job_id, c->stop_job) == 0 && h_state_terminal(e->status))
        c->stopped = 1;
    if (c->stop_after > 0 && c->nev >= c->stop_after) c->stopped = 1;
    pthread_mutex_unlock(&c->lock);
}

static size_t ev_write(char *p, size_t size, size_t nmemb, void *ud)
{
    ev_sse *c = ud;
    size_t n = size * nmemb;
    if (c->len + n + 1 > EV_BUF_CAP) return 0;
    char *nb = realloc(c->buf, c->len + n + 1);
    if (nb == NULL) return 0;
    c->buf = nb;
    for (size_t i = 0; i < n; i++) /* CRLF -> LF: events end at "\n\n" */
        if (p[i] != '\r') c->buf[c->len++] = p[i];
    c->buf[c->len] = '\0';
    for (;;) {
        char *sep = strstr(c->buf + c->parsed, "\n\n");
        if (sep == NULL) break;
        size_t at = (size_t)(sep - c->buf);
        ev_parse_block(c, c->buf + c->parsed, at - c->parsed);
        c->parsed = at + 2;
        if (c->stopped) return 0; /* abort the transfer: we have what we wanted */
    }
    return n;
}

static size_t ev_header(char *p, size_t size, size_t nmemb, void *ud)
{
    ev_sse *c = ud;
    size_t n = size * nmemb;
    if (n > 13 && strncasecmp(p, "content-type:", 13) == 0) {
        const char *v = p + 13;
        while (*v == ' ') v++;
        snprintf(c->ctype, sizeof c->ctype, "%.*s", (int)(n - (size_t)(v - p)), v);
    }
    if (n <= 2) c->connected = 1; /* blank line: headers complete */
    return n;
}

static void ev_init(ev_sse *c, const char *url, const char *token, long timeout_ms)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->url = url;
    c->token = token;
    c->timeout_ms = timeout_ms;
}

static void ev_fini(ev_sse *c)
{
    free(c->buf);
    c->buf = NULL;
    pthread_mutex_destroy(&c->lock);
}

static void ev_set_stop(ev_sse *c, const char *job)
{
    pthread_mutex_lock(&c->lock);
    snprintf(c->stop_job, sizeof c->stop_job, "%s", job);
    pthread_mutex_unlock(&c->lock);
}

/* Runs the SSE request until the server closes it, the stop event, or the timeout. */
static void ev_sse_run(ev_sse *c)
{
    CURL *e = curl_easy_init();
    struct curl_slist *hl = NULL;
    char line[512];
    snprintf(line, sizeof line, "Authorization: Bearer %s", c->token);
    hl = curl_slist_append(hl, line);
    hl = curl_slist_append(hl, "Accept: text/event-stream");
    if (c->last_event_id != NULL) {
        snprintf(line, sizeof line, "Last-Event-ID: %s", c->last_event_id);
        hl = curl_slist_append(hl, line);
    }
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, ev_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, ev_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    c->rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &c->http);
    curl_easy_cleanup(e);
    curl_slist_free_all(hl);
}

static void *ev_sse_thread(void *arg)
{
    ev_sse_run(arg);
    return NULL;
}

static int ev_connected(void *arg)
{
    return ((ev_sse *)arg)->connected;
}

static void ev_dump(const ev_sse *c, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < c->nev && o + 1 < len; i++) {
        int w = snprintf(out + o, len - o, "[%s %s %s %s] ", c->ev[i].id, c->ev[i].type, c->ev[i].job_id,
                         c->ev[i].status);
        if (w < 0) break;
        o += (size_t)w;
    }
}

/* ---- long-poll -------------------------------------------------------------- */

/* Submits a 1 s job and expects GET ?wait=10 to answer it completed, soon
 * after its end; `which` names the waiter in failure messages. */
static void expect_wait_answers_at_end(h_stack *s, const char *prompt, const char *which)
{
    char id[65], path[256];
    h_resp r;
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, prompt, id), 202);
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=10", id);
    int64_t t0 = h_now_ms();
    long st = h_api(s, &r, "GET", path, H_TOKEN_ALICE, NULL);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(st, 200, "%ld %s", st, r.body);
    cr_expect_str_eq(h_jstr(r.json, "status"), "completed",
                     "gateway: ?wait=10 answered before terminal (%s): %s", which, r.body);
    cr_expect(took < 4000, "gateway: ?wait=10 on a 1 s job took %lld ms (%s)", (long long)took,
              which);
    h_resp_free(&r);
}

/* Submits a quick job (an announcement for the gateway to see, one per
 * poll); true once the gateway has left jobs.done. */
static int feed_stopped_after_a_job(void *arg)
{
    h_stack *s = arg;
    char id[65];
    if (h_metric(s, H_GATEWAY, "kiln_gateway_done_feed") == 0) return 1;
    cr_assert_eq(h_submit_prompt(s, H_TOKEN_ALICE, "quick stoat", id), 202);
    return 0;
}

Test(events, wait_long_poll)
{
    h_stack s;
    h_stack_opts o = {.env = {"KILN_WAIT_FEED_LINGER=3s", NULL}};
    h_start(&s, &o);
    char slow[65], path[256];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=30000 patient stoat", slow), 202);
    /* Nobody waited yet: the gateway does not take every jobs.done. */
    cr_expect_eq(h_metric(&s, H_GATEWAY, "kiln_gateway_done_feed"), 0,
                 "gateway: subscribed to jobs.done before any ?wait");

    /* ?wait=N answers as soon as the job is terminal: the first waiter
     * (whose store query left before the subscription) and a later one. */
    expect_wait_answers_at_end(&s, "!sleep=1000 waiting stoat", "first waiter");
    cr_expect_eq(h_metric(&s, H_GATEWAY, "kiln_gateway_done_feed"), 1,
                 "gateway: not subscribed to jobs.done while ?wait is in use");
    expect_wait_answers_at_end(&s, "!sleep=1000 second stoat", "a later waiter");
    cr_expect_eq(h_metric(&s, H_GATEWAY, "kiln_gateway_done_feed"), 1,
                 "gateway: not subscribed to jobs.done while ?wait is in use");
    h_resp r;

    /* ... or after N s with the job still running. */
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=1", slow);
    int64_t t0 = h_now_ms();
    long st = h_api(&s, &r, "GET", path, H_TOKEN_ALICE, NULL);
    int64_t took = h_now_ms() - t0;
    cr_expect_eq(st, 200, "%ld %s", st, r.body);
    const char *status = h_jstr(r.json, "status");
    cr_expect(status != NULL && !h_state_terminal(status), "status %s", status);
    cr_expect(took >= 900, "gateway: ?wait=1 answered after %lld ms (should wait ~1 s)", (long long)took);
    cr_expect(took < 3500, "gateway: ?wait=1 answered after %lld ms", (long long)took);
    h_resp_free(&r);

    /* wait is 0..60 s. */
    snprintf(path, sizeof path, "/v1/jobs/%s?wait=61", slow);
    h_api(&s, &r, "GET", path, H_TOKEN_ALICE, NULL);
    h_expect_error(&r, 400, "invalid_argument", NULL);
    h_resp_free(&r);

    h_job_post(&s, &r, H_TOKEN_ALICE, slow, "cancel");
    h_resp_free(&r);

    /* Nobody waits: a jobs.done 3 s (KILN_WAIT_FEED_LINGER) after the last
     * park ends the subscription; the next ?wait makes a new one. */
    cr_expect(h_wait_for(feed_stopped_after_a_job, &s, 15000, 100),
              "gateway: still subscribed to jobs.done 15 s after the last ?wait");
    expect_wait_answers_at_end(&s, "!sleep=1000 third stoat", "after the feed stopped");
    h_stop(&s);
}

/* ---- SSE ------------------------------------------------------------------- */

Test(events, job_stream_closes_after_terminal)
{
    h_stack s;
    h_start(&s, NULL);
    char id[65], url[512], dump[4096];
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_ALICE, "!sleep=1000 streaming stoat", id), 202);
    snprintf(url, sizeof url, "%s/v1/jobs/%s/events", s.gw_url, id);
    ev_sse c;
    ev_init(&c, url, H_TOKEN_ALICE, 15000);
    ev_sse_run(&c);
    ev_dump(&c, dump, sizeof dump);
    cr_expect_eq(c.http, 200, "GET events: HTTP %ld", c.http);
    cr_expect(strncmp(c.ctype, "text/event-stream", 17) == 0, "content type '%s'", c.ctype);
    cr_expect_eq(c.rc, CURLE_OK, "gateway: per-job stream not closed after the terminal event (%s): %s",
                 curl_easy_strerror(c.rc), dump);
    cr_assert(c.nev >= 1, "no events; raw: %.500s", c.buf != NULL ? c.buf : "");
    for (int i = 0; i < c.nev; i++) {
        cr_expect_str_eq(c.ev[i].type, "job", "event %d type: %s", i, dump);
        cr_expect(c.ev[i].id[0] != '\0', "event %d without id: %s", i, dump);
        cr_expect(c.ev[i].data_ok, "event %d data is not a JSON job: %s", i, dump);
        cr_expect_str_eq(c.ev[i].job_id, id, "event %d for another job: %s", i, dump);
        if (i < c.nev - 1) cr_expect(!h_state_terminal(c.ev[i].status), "events after the terminal one: %s", dump);
    }
    cr_expect_str_eq(c.ev[c.nev - 1].status, "completed", "last event: %s", dump);

    /* A finished job: the terminal event at once, then closed. */
    ev_sse c2;
    ev_init(&c2, url, H_TOKEN_ALICE, 5000);
    int64_t t0 = h_now_ms();
    ev_sse_run(&c2);
    ev_dump(&c2, dump, sizeof dump);
    cr_expect_eq(c2.rc, CURLE_OK, "stream of a finished job not closed (%s)", curl_easy_strerror(c2.rc));
    cr_expect(h_now_ms() - t0 < 4000, "stream of a finished job stayed open");
    cr_expect(c2.nev >= 1 && strcmp(c2.ev[c2.nev - 1].status, "completed") == 0, "finished job stream: %s", dump);
    ev_fini(&c);
    ev_fini(&c2);
    h_stop(&s);
}

Test(events, user_stream_own_jobs_and_resume)
{
    h_stack s;
    h_start(&s, NULL);
    char url[256], dump[8192];
    snprintf(url, sizeof url, "%s/v1/events", s.gw_url);
    char aid[65], bid[65];

    ev_sse c;
    ev_init(&c, url, H_TOKEN_ALICE, 20000);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ev_sse_thread, &c), 0);
    cr_expect(h_wait_for(ev_connected, &c, 5000, 20), "gateway: /v1/events sent no headers within 5 s");
    /* Bob's job first, then alice's: alice's stream must carry only hers. */
    cr_assert_eq(h_submit_prompt(&s, H_TOKEN_BOB, "!sleep=200 bob's stoat", bid), 202);
    const char *body = "{\"prompt\":\"!sleep=700 alice's stoat\"}";
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, body, aid), 202);
    ev_set_stop(&c, aid); /* her terminal event comes >= 700 ms later */
    pthread_join(t, NULL);
    ev_dump(&c, dump, sizeof dump);
    cr_expect_eq(c.http, 200, "GET /v1/events: HTTP %ld", c.http);
    cr_expect(c.stopped, "gateway: no terminal event for alice's job on /v1/events: %s", dump);
    int ours = 0;
    for (int i = 0; i < c.nev; i++) {
        cr_expect_str_neq(c.ev[i].job_id, bid, "alice's stream carries bob's job: %s", dump);
        cr_expect_str_eq(c.ev[i].type, "job");
        if (strcmp(c.ev[i].job_id, aid) == 0) ours++;
    }
    cr_expect(ours >= 2, "want several status changes of alice's job (pending/processing/completed), got %d: %s",
              ours, dump);

    /* Resume after the first of alice's events: the later ones come again. */
    int first = -1;
    for (int i = 0; i < c.nev && first < 0; i++)
        if (strcmp(c.ev[i].job_id, aid) == 0) first = i;
    if (first >= 0 && ours >= 2) {
        ev_sse c2;
        ev_init(&c2, url, H_TOKEN_ALICE, 10000);
        c2.last_event_id = c.ev[first].id;
        ev_set_stop(&c2, aid);
        ev_sse_run(&c2);
        char dump2[8192];
        ev_dump(&c2, dump2, sizeof dump2);
        cr_expect(c2.stopped, "gateway: resume with Last-Event-ID %s did not replay the missed terminal event: %s",
                  c.ev[first].id, dump2);
        for (int i = 0; i < c2.nev; i++)
            cr_expect_str_neq(c2.ev[i].id, c.ev[first].id, "resume repeated the Last-Event-ID event: %s", dump2);
        /* Every event of alice's job after the first one is in the replay. */
        for (int i = first + 1; i < c.nev; i++) {
            if (strcmp(c.ev[i].job_id, aid) != 0) continue;
            int found = 0;
            for (int k = 0; k < c2.nev; k++) found |= strcmp(c2.ev[k].id, c.ev[i].id) == 0;
            cr_expect(found, "resume missed event %s (%s): %s", c.ev[i].id, c.ev[i].status, dump2);
        }
        ev_fini(&c2);
    }
    ev_fini(&c);
    h_stop(&s);
}

/* The first events of jobs the store applies in one batch come in one
 * EventBatch message: ids "<seq>.<index>". A stream resumed from an id in
 * the middle of it gets exactly the rest, and one resumed from its last
 * record gets only what follows. */
Test(events, user_stream_resumes_inside_a_batch_of_new_jobs)
{
    enum { N = 40 };
    h_stack s;
    h_stack_opts o = {.no_consumer = 1}; /* the jobs stay pending: first events only */
    h_start(&s, &o);
    char url[256], dump[16384], ids[N + 1][65];
    snprintf(url, sizeof url, "%s/v1/events", s.gw_url);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(h_nats_connect(&s, &nc, &js), 0, "cannot connect to nats-server");

    ev_sse c;
    ev_init(&c, url, H_TOKEN_ALICE, 30000);
    c.stop_after = N;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, ev_sse_thread, &c), 0);
    cr_assert(h_wait_for(ev_connected, &c, 5000, 20), "gateway: /v1/events sent no headers within 5 s");
    /* With the store stopped the jobs queue up; restarted, it applies them
     * in one batch. */
    cr_assert_eq(h_proc_term(&s, H_STORE), 0);
    for (int i = 0; i < N; i++) {
        h_unique_id(ids[i], "evbatch");
        cr_assert_eq(h_publish_jobreq(js, KILN_SUBJ_GENERATE, ids[i], "alice", "a heron"), 0);
    }
    cr_assert_eq(h_proc_start(&s, H_STORE), 0);
    pthread_join(t, NULL);
    ev_dump(&c, dump, sizeof dump);
    cr_assert_eq(c.nev, N, "want %d first events, got %d: %s", N, c.nev, dump);
    int batched = 0;
    for (int i = 0; i < N; i++) {
        cr_expect_str_eq(c.ev[i].job_id, ids[i], "event %d is not job %d in publish order: %s", i, i, dump);
        cr_expect_str_eq(c.ev[i].status, "pending");
        batched += strchr(c.ev[i].id, '.') != NULL;
    }
    cr_assert_eq(batched, N, "the batch's first events did not come as one EventBatch: %s", dump);

    /* Resume inside the batch: exactly the rest, in order. */
    ev_sse c2;
    ev_init(&c2, url, H_TOKEN_ALICE, 10000);
    c2.last_event_id = c.ev[9].id;
    c2.stop_after = N - 10;
    ev_sse_run(&c2);
    char dump2[16384];
    ev_dump(&c2, dump2, sizeof dump2);
    cr_assert_eq(c2.nev, N - 10, "resume from %s: want %d events: %s", c.ev[9].id, N - 10, dump2);
    for (int i = 0; i < N - 10; i++)
        cr_expect_str_eq(c2.ev[i].id, c.ev[10 + i].id, "resume from %s: event %d: %s", c.ev[9].id, i, dump2);

    /* Resume from the batch's last record: only what comes next. */
    ev_sse c3;
    ev_init(&c3, url, H_TOKEN_ALICE, 10000);
    c3.last_event_id = c.ev[N - 1].id;
    c3.stop_after = 1;
    cr_assert_eq(pthread_create(&t, NULL, ev_sse_thread, &c3), 0);
    cr_assert(h_wait_for(ev_connected, &c3, 5000, 20), "gateway: /v1/events sent no headers within 5 s");
    h_unique_id(ids[N], "evnext");
    cr_assert_eq(h_publish_jobreq(js, KILN_SUBJ_GENERATE, ids[N], "alice", "a heron"), 0);
    pthread_join(t, NULL);
    ev_dump(&c3, dump2, sizeof dump2);
    cr_assert_eq(c3.nev, 1, "%s", dump2);
    cr_expect_str_eq(c3.ev[0].job_id, ids[N], "resume from the batch's end repeated an event: %s", dump2);

    ev_fini(&c3);
    ev_fini(&c2);
    ev_fini(&c);
    h_nats_close(nc, js);
    h_stop(&s);
}

/* ---- many idle waiters ----------------------------------------------------- */

static int ev_threads(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "Threads:", 8) == 0) n = atoi(line + 8);
    fclose(f);
    return n;
}

static size_t ev_discard(char *p, size_t size, size_t nmemb, void *ud)
{
    (void)p;
    (void)ud;
    return size * nmemb;
}

Test(events, many_idle_waiters_few_threads)
{
    h_stack s;
    h_start(&s, NULL);
    char id[65], url[512];
    cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"far future stoat\",\"delay_ms\":600000}", id), 202);
    snprintf(url, sizeof url, "%s/v1/jobs/%s?wait=5", s.gw_url, id);
    int threads_before = ev_threads(s.procs[H_GATEWAY].pid);

    enum { N = 200 };
    CURLM *m = curl_multi_init();
    CURL *e[N];
    struct curl_slist *hl = curl_slist_append(NULL, "Authorization: Bearer " H_TOKEN_ALICE);
    for (int i = 0; i < N; i++) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e[i], CURLOPT_TIMEOUT_MS, 30000L);
        curl_easy_setopt(e[i], CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, ev_discard);
        curl_easy_setopt(e[i], CURLOPT_PRIVATE, (void *)(intptr_t)i);
        curl_multi_add_handle(m, e[i]);
    }
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    int64_t t0 = h_now_ms(), end = t0 + 30000;
    int running = N, max_threads = 0, ok200 = 0, finished = 0;
    int64_t first_done = -1, last_done = -1;
    while (running > 0 && h_now_ms() < end) {
        curl_multi_perform(m, &running);
        int q = 0;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &q)) != NULL) {
            if (msg->msg != CURLMSG_DONE) continue;
            long code = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            if (msg->data.result == CURLE_OK && code == 200) ok200++;
            finished++;
            int64_t el = h_now_ms() - t0;
            if (first_done < 0) first_done = el;
            last_done = el;
        }
        int th = ev_threads(s.procs[H_GATEWAY].pid);
        if (th > max_threads) max_threads = th;
        curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    for (int i = 0; i < N; i++) {
        curl_multi_remove_handle(m, e[i]);
        curl_easy_cleanup(e[i]);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(hl);

    cr_log_info("gateway threads: %d before, at most %d with %d long-polls; answers after %lld..%lld ms",
                threads_before, max_threads, N, (long long)first_done, (long long)last_done);
    cr_expect_eq(finished, N, "only %d of %d long-polls finished within 30 s", finished, N);
    cr_expect_eq(ok200, N, "only %d of %d long-polls answered 200", ok200, N);
    cr_expect(first_done >= 4000, "gateway: a ?wait=5 long-poll answered after %lld ms", (long long)first_done);
    cr_expect(last_done < 12000, "gateway: waiters are served one after another (last after %lld ms)",
              (long long)last_done);
    cr_expect(max_threads > 0 && max_threads < 50,
              "gateway: %d threads with %d idle long-polls (before: %d): a thread per waiter?", max_threads, N,
              threads_before);
    h_stop(&s);
}
