/* transfers.c - the transfer threads: KILN_TRANSFER_THREADS workers, each
 * with its own libcurl multi handle, inbox and running list, run the provider
 * calls of this process (and, on completion, parse the answer and save the
 * images). Each worker aborts its own cancelled calls; worker 0 also sends
 * in-progress acks every AckWait/3, gives up jobs whose result publish was
 * never acknowledged (every second: after 10 s, or 2 s after a reconnect),
 * and logs the outcome summary. Other threads talk to a
 * worker only through its inbox (cons_transfers_submit) and curl_multi_wakeup. */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"

#define TR_CONNECT_TIMEOUT_MS 10000
#define TR_POLL_MAX_MS 1000
#define TR_URL_MAX 2048
#define TR_AUTH_MAX 4096
#define TR_OVERDUE_BATCH 64
#define TR_OVERDUE_EVERY_MS 1000 /* how often worker 0 looks for overdue publishes */
/* After a reconnect, the acks of publishes written before it come within
 * this or not at all (the old server took them down with it); publishes
 * buffered during the outage go out on reconnect and are acked in ms. */
#define TR_RECONNECT_ACK_GRACE_MS 2000
#define TR_IDLE_EASY_MAX 64 /* reset easy handles a worker keeps for its next calls */

/* One transfer thread and everything only it touches, except the inbox. */
typedef struct {
    int index;
    CURLM *multi;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    cons_job *inbox_head, *inbox_tail; /* guarded by mu */
    atomic_bool abort;                 /* drain timeout: hand back every running job */
    cons_job *running;                 /* this worker only */
    /* When the next running call may cross CONS_PROCESSING_AFTER_MS without
     * PROCESSING sent (monotonic ms; INT64_MAX = none). This worker only. */
    int64_t next_slow;
    /* Easy handles of finished calls, reset for the next (this worker only):
     * curl_easy_cleanup alone was 2.8 % of the consumer's samples in W2. */
    CURL *idle[TR_IDLE_EASY_MAX];
    int n_idle;
} tr_worker;

static tr_worker *tr_workers;
static int tr_n;
static atomic_uint tr_rr; /* round-robin cursor of cons_transfers_submit */
static atomic_bool tr_quit;
/* Shared read-only while the workers run. */
static char tr_url[TR_URL_MAX];
static char tr_auth[TR_AUTH_MAX];
static struct curl_slist *tr_headers; /* the same for every call */

static size_t tr_on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    cons_job *j = ud;
    size_t n = size * nmemb;
    if (j->resp_len + n + 1 > CONS_RESPONSE_MAX) {
        j->resp_too_large = true;
        return 0; /* aborts the transfer */
    }
    if (j->resp_len + n + 1 > j->resp_cap) {
        size_t cap = j->resp_cap > 0 ? j->resp_cap : 16384;
        while (cap < j->resp_len + n + 1) cap *= 2;
        if (cap > CONS_RESPONSE_MAX) cap = CONS_RESPONSE_MAX;
        char *p = realloc(j->resp, cap);
        if (p == NULL) return 0;
        j->resp = p;
        j->resp_cap = cap;
    }
    memcpy(j->resp + j->resp_len, data, n);
    j->resp_len += n;
    j->resp[j->resp_len] = '\0';
    return n;
}

/* The value of header line data[0..n) if it is header name (with its ':'), else NULL. */
static const char *tr_header_value(const char *data, size_t n, const char *name, size_t *len)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(data, name, k) != 0) return NULL;
    *len = n - k;
    return data + k;
}

static size_t tr_on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    cons_job *j = ud;
    size_t n = size * nmemb, len = 0;
    const char *v;
    int64_t ms;
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue or a proxy's CONNECT): only
         * the last one's headers count. */
        j->retry_after_ms = 0;
        j->retry_after_exact = false;
        j->ratelimit_reset_ms = 0;
    } else if ((v = tr_header_value(data, n, "retry-after:", &len)) != NULL) {
        /* retry-after-ms (Azure OpenAI) is more precise: it wins. */
        if (!j->retry_after_exact && (ms = openai_parse_retry_after(v, len)) >= 0)
            j->retry_after_ms = ms;
    } else if ((v = tr_header_value(data, n, "retry-after-ms:", &len)) != NULL) {
        if ((ms = openai_parse_retry_after_ms(v, len)) > 0) {
            j->retry_after_ms = ms;
            j->retry_after_exact = true;
        }
    } else if ((v = tr_header_value(data, n, "x-ratelimit-reset-requests:", &len)) != NULL) {
        if ((ms = openai_parse_reset(v, len)) >= 0) j->ratelimit_reset_ms = ms;
    }
    return n;
}

static void tr_release_handle(tr_worker *w, cons_job *j)
{
    if (j->easy != NULL) {
        curl_multi_remove_handle(w->multi, j->easy);
        if (w->n_idle < TR_IDLE_EASY_MAX) {
            curl_easy_reset(j->easy); /* keeps its buffers, drops every option */
            w->idle[w->n_idle++] = j->easy;
        } else {
            curl_easy_cleanup(j->easy);
        }
        j->easy = NULL;
    }
    free(j->req_body);
    j->req_body = NULL;
}

static void tr_unlink_running(tr_worker *w, cons_job *j)
{
    for (cons_job **pp = &w->running; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    j->next = NULL;
}

/* Starts j's provider call on w; returns a CURLcode (CURLE_OK when running). */
static CURLcode tr_start(tr_worker *w, cons_job *j)
{
    CURLcode rc = CURLE_OK;
    CURL *e = NULL;

    if (openai_build_request(j->req, &j->req_body) != KILN_OK) return CURLE_OUT_OF_MEMORY;
    e = w->n_idle > 0 ? w->idle[--w->n_idle] : curl_easy_init();
    if (e == NULL) return CURLE_FAILED_INIT;
    j->easy = e;

    j->retry_after_ms = 0;
    j->retry_after_exact = false;
    j->ratelimit_reset_ms = 0;
    j->resp_len = 0;
    j->resp_too_large = false;
    j->never_connected = false;
    int64_t timeout_ms = (int64_t)kiln_jobreq_timeout_s(j->req) * 1000;
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_URL, tr_url);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->req_body);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(j->req_body));
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, tr_headers);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, tr_on_body);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, tr_on_header);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)TR_CONNECT_TIMEOUT_MS);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    if (rc != CURLE_OK) return rc;
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) return CURLE_FAILED_INIT;
    j->started_mono = kiln_mono_ms();
    if (!j->processing_sent && j->started_mono + CONS_PROCESSING_AFTER_MS < w->next_slow)
        w->next_slow = j->started_mono + CONS_PROCESSING_AFTER_MS;
    j->next = w->running;
    w->running = j;
    return CURLE_OK;
}

static void tr_take_inbox(tr_worker *w)
{
    cons_job *list;
    pthread_mutex_lock(&w->mu);
    list = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (list != NULL) {
        cons_job *j = list;
        list = j->next;
        j->next = NULL;
        if (atomic_load(&j->cancel)) {
            cons_job_cancelled(j);
            continue;
        }
        CURLcode rc = tr_start(w, j);
        if (rc != CURLE_OK) {
            LOG_ERROR("provider call not started job=%s error=\"%s\"", j->id,
                      curl_easy_strerror(rc));
            tr_release_handle(w, j);
            j->started_mono = kiln_mono_ms();
            cons_job_transfer_done(j, (int)rc, 0);
        }
    }
}

static void tr_check_cancels(tr_worker *w)
{
    cons_job *j = w->running;
    while (j != NULL) {
        cons_job *next = j->next;
        if (atomic_load(&j->cancel)) {
            tr_unlink_running(w, j);
            tr_release_handle(w, j);
            cons_job_cancelled(j);
        }
        j = next;
    }
}

static void tr_hand_back_all(tr_worker *w)
{
    while (w->running != NULL) {
        cons_job *j = w->running;
        tr_unlink_running(w, j);
        tr_release_handle(w, j);
        cons_job_hand_back(j);
    }
}

static void tr_collect_done(tr_worker *w)
{
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        cons_job *j = NULL;
        long http = 0;
        CURLcode result = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &http);
        if (j == NULL) continue;
        /* Zero until the request's bytes went out on a connection. */
        long request_bytes = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_REQUEST_SIZE, &request_bytes);
        j->never_connected = request_bytes == 0;
        tr_unlink_running(w, j);
        tr_release_handle(w, j);
        cons_job_transfer_done(j, (int)result, http);
    }
}

/* Announces PROCESSING for calls running longer than CONS_PROCESSING_AFTER_MS.
 * Runs only when the earliest such deadline passed, so quick calls cost no scan. */
static void tr_announce_slow(tr_worker *w, int64_t now)
{
    if (now < w->next_slow) return;
    w->next_slow = INT64_MAX;
    for (cons_job *j = w->running; j != NULL; j = j->next) {
        if (j->processing_sent) continue;
        int64_t due = j->started_mono + CONS_PROCESSING_AFTER_MS;
        if (due <= now) cons_job_send_processing(j);
        else if (due < w->next_slow) w->next_slow = due;
    }
}

static void tr_sweep_overdue(int64_t now)
{
    cons_job *batch[TR_OVERDUE_BATCH];
    bool lost[TR_OVERDUE_BATCH];
    int64_t reconnected = kiln_nats_reconnected_at();
    int64_t lost_before = now - reconnected >= TR_RECONNECT_ACK_GRACE_MS ? reconnected : INT64_MIN;
    size_t n;
    do {
        n = cons_registry_take_overdue(now, lost_before, batch, lost, TR_OVERDUE_BATCH);
        /* A resent publish is tracked from now, after the reconnect, so a
         * later pass does not take it again unless another reconnect comes. */
        for (size_t i = 0; i < n; i++) {
            if (lost[i]) cons_job_resend(batch[i]);
            else cons_job_abandon(batch[i], "publish ack overdue");
        }
    } while (n == TR_OVERDUE_BATCH);
    cons_publish_drop_stale();
}

static void *tr_main(void *arg)
{
    tr_worker *w = arg;
    /* Once-per-process duties (keep-alives, overdue sweep, summary) run on worker 0. */
    bool duties = w->index == 0;
    int64_t ka_every = cons_g.set->ack_wait_ms / 3;
    if (ka_every < 100) ka_every = 100;
    int64_t next_ka = duties ? kiln_mono_ms() + ka_every : INT64_MAX;
    int64_t next_overdue = duties ? kiln_mono_ms() + TR_OVERDUE_EVERY_MS : INT64_MAX;
    int still = 0;

    while (!atomic_load(&tr_quit)) {
        tr_take_inbox(w);
        tr_check_cancels(w);
        if (atomic_exchange(&w->abort, false)) tr_hand_back_all(w);
        curl_multi_perform(w->multi, &still);
        cons_publish_batch_begin();
        tr_collect_done(w);
        cons_publish_batch_end();

        int64_t now = kiln_mono_ms();
        tr_announce_slow(w, now);
        if (duties) {
            if (now >= next_ka) {
                cons_registry_keepalive();
                next_ka = now + ka_every;
            }
            if (now >= next_overdue) {
                tr_sweep_overdue(now);
                next_overdue = now + TR_OVERDUE_EVERY_MS;
            }
            cons_job_log_summary(now);
        }
        int64_t wait = TR_POLL_MAX_MS;
        if (next_ka - now < wait) wait = next_ka - now;
        if (next_overdue - now < wait) wait = next_overdue - now;
        if (w->next_slow - now < wait) wait = w->next_slow - now;
        if (wait < 1) wait = 1;
        curl_multi_poll(w->multi, NULL, 0, (int)wait, NULL);
    }
    tr_take_inbox(w);
    tr_hand_back_all(w);
    cons_image_close(); /* this thread's pack */
    return NULL;
}

/* Zeroes the header lines (one holds the provider key, as tr_auth does)
 * and frees them. */
static void tr_headers_free(void)
{
    for (struct curl_slist *l = tr_headers; l != NULL; l = l->next)
        explicit_bzero(l->data, strlen(l->data));
    curl_slist_free_all(tr_headers);
    tr_headers = NULL;
}

/* Joins the started workers (tr_quit must be set) and frees every worker. */
static void tr_destroy_workers(void)
{
    for (int i = 0; i < tr_n; i++) {
        tr_worker *w = &tr_workers[i];
        if (w->started) {
            curl_multi_wakeup(w->multi);
            pthread_join(w->thread, NULL);
            w->started = false;
        }
    }
    for (int i = 0; i < tr_n; i++) {
        tr_worker *w = &tr_workers[i];
        while (w->n_idle > 0) curl_easy_cleanup(w->idle[--w->n_idle]);
        if (w->multi != NULL) curl_multi_cleanup(w->multi);
        pthread_mutex_destroy(&w->mu);
    }
    free(tr_workers);
    tr_workers = NULL;
    tr_n = 0;
    tr_headers_free();
}

/* The request headers every call sends (tr_auth must be set). */
static kiln_status tr_headers_build(void)
{
    const char *lines[] = {"Content-Type: application/json", "Expect:", tr_auth};
    size_t n = tr_auth[0] != '\0' ? 3 : 2;
    for (size_t i = 0; i < n; i++) {
        struct curl_slist *t = curl_slist_append(tr_headers, lines[i]);
        if (t == NULL) {
            tr_headers_free();
            return KILN_ENOMEM;
        }
        tr_headers = t;
    }
    return KILN_OK;
}

kiln_status cons_transfers_start(void)
{
    const cons_settings *set = cons_g.set;
    kiln_status st = KILN_OK;
    int n = (int)set->transfer_threads;
    if (n < 1) n = 1;
    size_t ulen = strlen(set->provider_url);
    while (ulen > 0 && set->provider_url[ulen - 1] == '/') ulen--;
    if (snprintf(tr_url, sizeof tr_url, "%.*s/images/generations", (int)ulen, set->provider_url) >=
        (int)sizeof tr_url)
        return KILN_EINVAL;
    tr_auth[0] = '\0';
    if (set->provider_key != NULL && set->provider_key[0] != '\0' &&
        snprintf(tr_auth, sizeof tr_auth, "Authorization: Bearer %s", set->provider_key) >=
            (int)sizeof tr_auth)
        return KILN_EINVAL;
    /* jansson picks its hash seed on first use; seed it before the workers
     * (which build and parse JSON) run concurrently. */
    json_object_seed(0);

    tr_workers = calloc((size_t)n, sizeof *tr_workers);
    if (tr_workers == NULL) return KILN_ENOMEM;
    if (tr_headers_build() != KILN_OK) {
        free(tr_workers);
        tr_workers = NULL;
        return KILN_ENOMEM;
    }
    /* Idle keep-alive connections stay bounded by the concurrency in total. */
    long maxconn = (long)(set->concurrency / n);
    if (maxconn < 1) maxconn = 1;
    atomic_store(&tr_quit, false);
    atomic_store(&tr_rr, 0);
    for (int i = 0; i < n; i++) {
        tr_worker *w = &tr_workers[i];
        w->index = i;
        w->next_slow = INT64_MAX;
        atomic_init(&w->abort, false);
        pthread_mutex_init(&w->mu, NULL);
        tr_n = i + 1; /* from here on tr_destroy_workers cleans w up */
        w->multi = curl_multi_init();
        if (w->multi == NULL) {
            st = KILN_ERR;
            goto out;
        }
        curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, maxconn);
    }
    for (int i = 0; i < n; i++) {
        tr_worker *w = &tr_workers[i];
        char name[16]; /* the kernel's limit, with the NUL; i < 16 */
        if (pthread_create(&w->thread, NULL, tr_main, w) != 0) {
            st = KILN_ERR;
            goto out;
        }
        w->started = true;
        snprintf(name, sizeof name, "kiln-xfer-%u", (unsigned)(unsigned char)i);
        pthread_setname_np(w->thread, name);
    }
    LOG_INFO("transfers started threads=%d url=%s auth=%s", n, tr_url,
             tr_auth[0] ? "bearer" : "none");
out:
    if (st != KILN_OK) {
        LOG_ERROR("transfers not started threads=%d", n);
        atomic_store(&tr_quit, true);
        tr_destroy_workers();
        explicit_bzero(tr_auth, sizeof tr_auth);
    }
    return st;
}

void cons_transfers_submit(cons_job *j)
{
    /* Round robin: calls cost about the same, and a slow one only waits on I/O. */
    tr_worker *w = &tr_workers[atomic_fetch_add_explicit(&tr_rr, 1, memory_order_relaxed) %
                               (unsigned)tr_n];
    j->next = NULL;
    pthread_mutex_lock(&w->mu);
    bool was_empty = w->inbox_head == NULL;
    if (w->inbox_tail != NULL) w->inbox_tail->next = j;
    else w->inbox_head = j;
    w->inbox_tail = j;
    pthread_mutex_unlock(&w->mu);
    /* A non-empty inbox already has a wakeup on its way, and the worker takes
     * the whole inbox at the top of its loop: one wakeup (a socket write)
     * per batch instead of per job. */
    if (was_empty) curl_multi_wakeup(w->multi);
}

void cons_transfers_wakeup(void)
{
    for (int i = 0; i < tr_n; i++)
        if (tr_workers[i].multi != NULL) curl_multi_wakeup(tr_workers[i].multi);
}

void cons_transfers_abort_all(void)
{
    for (int i = 0; i < tr_n; i++) atomic_store(&tr_workers[i].abort, true);
    cons_transfers_wakeup();
}

void cons_transfers_stop(void)
{
    if (tr_workers == NULL) return;
    atomic_store(&tr_quit, true);
    tr_destroy_workers();
    explicit_bzero(tr_auth, sizeof tr_auth);
}
