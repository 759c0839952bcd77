/* transfers.c - the transfer thread: one libcurl multi handle runs every
 * provider call of this process. It also sends in-progress acks every
 * AckWait/3, aborts cancelled calls, and gives up jobs whose result publish
 * was never acknowledged. Other threads talk to it only through the inbox
 * (cons_transfers_submit) and curl_multi_wakeup. */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "cons.h"
#include "log.h"

#define TR_CONNECT_TIMEOUT_MS 10000
#define TR_POLL_MAX_MS 1000
#define TR_URL_MAX 2048
#define TR_AUTH_MAX 4096
#define TR_OVERDUE_BATCH 64

static CURLM *tr_multi;
static pthread_t tr_thread;
static bool tr_started;
static pthread_mutex_t tr_mu = PTHREAD_MUTEX_INITIALIZER;
static cons_job *tr_inbox_head, *tr_inbox_tail; /* guarded by tr_mu */
static atomic_bool tr_quit;
static atomic_bool tr_abort;
static cons_job *tr_running;                    /* transfer thread only */
/* Transfer thread: when the next running call may cross CONS_PROCESSING_AFTER_MS
 * without PROCESSING sent (monotonic ms; INT64_MAX = none). */
static int64_t tr_next_slow = INT64_MAX;
static char tr_url[TR_URL_MAX];
static char tr_auth[TR_AUTH_MAX];

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

static size_t tr_on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    cons_job *j = ud;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    if (n > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        int64_t ms = openai_parse_retry_after(data + sizeof name - 1, n - (sizeof name - 1));
        if (ms >= 0) j->retry_after_ms = ms;
    }
    return n;
}

static void tr_release_handle(cons_job *j)
{
    if (j->easy != NULL) {
        curl_multi_remove_handle(tr_multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
    }
    curl_slist_free_all(j->headers);
    j->headers = NULL;
    free(j->req_body);
    j->req_body = NULL;
}

static void tr_unlink_running(cons_job *j)
{
    for (cons_job **pp = &tr_running; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    j->next = NULL;
}

/* Starts j's provider call; returns a CURLcode (CURLE_OK when running). */
static CURLcode tr_start(cons_job *j)
{
    CURLcode rc = CURLE_OK;
    CURL *e = NULL;
    struct curl_slist *h = NULL, *t = NULL;

    if (openai_build_request(j->req, &j->req_body) != KILN_OK) return CURLE_OUT_OF_MEMORY;
    e = curl_easy_init();
    if (e == NULL) return CURLE_FAILED_INIT;
    j->easy = e;
    t = curl_slist_append(h, "Content-Type: application/json");
    if (t != NULL) h = t;
    t = t != NULL ? curl_slist_append(h, "Expect:") : NULL;
    if (t != NULL && tr_auth[0] != '\0') t = curl_slist_append(h, tr_auth);
    j->headers = h;
    if (t == NULL) return CURLE_OUT_OF_MEMORY;

    j->retry_after_ms = 0;
    j->resp_len = 0;
    j->resp_too_large = false;
    int64_t timeout_ms = (int64_t)kiln_jobreq_timeout_s(j->req) * 1000;
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_URL, tr_url);
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->req_body);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(j->req_body));
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
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
    if (curl_multi_add_handle(tr_multi, e) != CURLM_OK) return CURLE_FAILED_INIT;
    j->started_mono = kiln_mono_ms();
    if (!j->processing_sent && j->started_mono + CONS_PROCESSING_AFTER_MS < tr_next_slow)
        tr_next_slow = j->started_mono + CONS_PROCESSING_AFTER_MS;
    j->next = tr_running;
    tr_running = j;
    return CURLE_OK;
}

static void tr_take_inbox(void)
{
    cons_job *list;
    pthread_mutex_lock(&tr_mu);
    list = tr_inbox_head;
    tr_inbox_head = tr_inbox_tail = NULL;
    pthread_mutex_unlock(&tr_mu);
    while (list != NULL) {
        cons_job *j = list;
        list = j->next;
        j->next = NULL;
        if (atomic_load(&j->cancel)) {
            cons_job_cancelled(j);
            continue;
        }
        CURLcode rc = tr_start(j);
        if (rc != CURLE_OK) {
            LOG_ERROR("provider call not started job=%s error=\"%s\"", j->id,
                      curl_easy_strerror(rc));
            tr_release_handle(j);
            j->started_mono = kiln_mono_ms();
            cons_job_transfer_done(j, (int)rc, 0);
        }
    }
}

static void tr_check_cancels(void)
{
    cons_job *j = tr_running;
    while (j != NULL) {
        cons_job *next = j->next;
        if (atomic_load(&j->cancel)) {
            tr_unlink_running(j);
            tr_release_handle(j);
            cons_job_cancelled(j);
        }
        j = next;
    }
}

static void tr_hand_back_all(void)
{
    while (tr_running != NULL) {
        cons_job *j = tr_running;
        tr_unlink_running(j);
        tr_release_handle(j);
        cons_job_hand_back(j);
    }
}

static void tr_collect_done(void)
{
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(tr_multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        cons_job *j = NULL;
        long http = 0;
        CURLcode result = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &http);
        if (j == NULL) continue;
        tr_unlink_running(j);
        tr_release_handle(j);
        cons_job_transfer_done(j, (int)result, http);
    }
}

/* Announces PROCESSING for calls running longer than CONS_PROCESSING_AFTER_MS.
 * Runs only when the earliest such deadline passed, so quick calls cost no scan. */
static void tr_announce_slow(int64_t now)
{
    if (now < tr_next_slow) return;
    tr_next_slow = INT64_MAX;
    for (cons_job *j = tr_running; j != NULL; j = j->next) {
        if (j->processing_sent) continue;
        int64_t due = j->started_mono + CONS_PROCESSING_AFTER_MS;
        if (due <= now) cons_job_call_slow(j);
        else if (due < tr_next_slow) tr_next_slow = due;
    }
}

static void tr_sweep_overdue(int64_t now)
{
    cons_job *batch[TR_OVERDUE_BATCH];
    size_t n = cons_registry_take_overdue(now, batch, TR_OVERDUE_BATCH);
    for (size_t i = 0; i < n; i++) cons_job_abandon(batch[i], "publish ack overdue");
}

static void *tr_main(void *arg)
{
    (void)arg;
    int64_t ka_every = cons_g.set->ack_wait_ms / 3;
    if (ka_every < 100) ka_every = 100;
    int64_t next_ka = kiln_mono_ms() + ka_every;
    int still = 0;

    while (!atomic_load(&tr_quit)) {
        tr_take_inbox();
        tr_check_cancels();
        if (atomic_exchange(&tr_abort, false)) tr_hand_back_all();
        curl_multi_perform(tr_multi, &still);
        tr_collect_done();

        int64_t now = kiln_mono_ms();
        tr_announce_slow(now);
        if (now >= next_ka) {
            cons_registry_keepalive();
            tr_sweep_overdue(now);
            next_ka = now + ka_every;
        }
        cons_job_log_summary(now);
        int64_t wait = next_ka - now;
        if (tr_next_slow - now < wait) wait = tr_next_slow - now;
        if (wait > TR_POLL_MAX_MS) wait = TR_POLL_MAX_MS;
        if (wait < 1) wait = 1;
        curl_multi_poll(tr_multi, NULL, 0, (int)wait, NULL);
    }
    tr_take_inbox();
    tr_hand_back_all();
    return NULL;
}

kiln_status cons_transfers_start(void)
{
    const cons_settings *set = cons_g.set;
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

    tr_multi = curl_multi_init();
    if (tr_multi == NULL) return KILN_ERR;
    /* Keep one idle keep-alive connection per possible in-flight call. */
    curl_multi_setopt(tr_multi, CURLMOPT_MAXCONNECTS, (long)set->concurrency);
    atomic_store(&tr_quit, false);
    atomic_store(&tr_abort, false);
    if (pthread_create(&tr_thread, NULL, tr_main, NULL) != 0) {
        curl_multi_cleanup(tr_multi);
        tr_multi = NULL;
        return KILN_ERR;
    }
    pthread_setname_np(tr_thread, "kiln-transfers");
    tr_started = true;
    LOG_INFO("transfers started url=%s auth=%s", tr_url, tr_auth[0] ? "bearer" : "none");
    return KILN_OK;
}

void cons_transfers_submit(cons_job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&tr_mu);
    if (tr_inbox_tail != NULL) tr_inbox_tail->next = j;
    else tr_inbox_head = j;
    tr_inbox_tail = j;
    pthread_mutex_unlock(&tr_mu);
    curl_multi_wakeup(tr_multi);
}

void cons_transfers_wakeup(void)
{
    if (tr_multi != NULL) curl_multi_wakeup(tr_multi);
}

void cons_transfers_abort_all(void)
{
    atomic_store(&tr_abort, true);
    cons_transfers_wakeup();
}

void cons_transfers_stop(void)
{
    if (!tr_started) return;
    atomic_store(&tr_quit, true);
    curl_multi_wakeup(tr_multi);
    pthread_join(tr_thread, NULL);
    tr_started = false;
    curl_multi_cleanup(tr_multi);
    tr_multi = NULL;
    explicit_bzero(tr_auth, sizeof tr_auth);
}
