/* server.c - the dev provider's HTTP server: routes, request bodies, OpenAI
 * error bodies and fault injection, on libmicrohttpd's epoll thread pool.
 * A request that must wait (a latency, !sleep, !hang) is suspended and
 * waited for on a thread of its own, which resumes it: answering requests
 * costs no thread each, and a wait still notices a client that leaves. */
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <jansson.h>

#include "attempts.h"
#include "clock.h"
#include "directives.h"
#include "hash.h"
#include "images.h"
#include "log.h"
#include "metrics.h"
#include "piccache.h"
#include "picture.h"
#include "server.h"

#define SERVER_WAIT_SLICE_MS 100    /* how often a waiting request checks for shutdown */
#define SERVER_IDLE_TIMEOUT_S 120   /* idle keep-alive connections are closed after this */
#define SERVER_PATH_LOG_MAX 96      /* logged path prefix */
#define SERVER_HOST_MAX 255
#define SERVER_GEN_PATH "/v1/images/generations"
#define SERVER_FILES_PREFIX "/v1/files/"
#define SERVER_THREADS 2            /* MHD's epoll thread pool */
#define SERVER_STOP_POLL_MS 10      /* how often stop checks that the waits are over */

struct dev_server {
    struct MHD_Daemon *mhd;
    dev_server_opts opts;
    dev_attempts *attempts;
    atomic_bool stopping;
    atomic_int waiting; /* waiter threads still running (each holds a suspended request) */
    uint16_t port;
};

typedef enum {
    SERVER_WAIT_NONE = 0, /* not waited (yet) */
    SERVER_WAIT_RUNNING,  /* suspended, a waiter thread runs */
    SERVER_WAIT_DONE,     /* resumed: wait_rc says how it ended */
} server_wait_phase;

/* Per-request state, created on MHD's first call and freed when the request
 * completes. Owned by the request's connection thread. */
typedef struct {
    int64_t start_us;
    char *body;
    size_t len, cap;
    int too_large;
    unsigned status;   /* queued HTTP status; 0 = none (aborted) */
    uint64_t attempt;  /* 0 when not counted */
    int tracked;       /* begun in the attempts table under key; ended in server_completed */
    uint64_t key[2];
    /* A generation that waits: what was decided before the wait. */
    server_wait_phase phase;
    int wait_rc;          /* 0 the delay passed, -1 client left or stopping, -2 no thread */
    dev_images_req gen;   /* parsed request, cleared when the request completes */
    dev_step act;
    size_t image_off;     /* where the image prompt starts (after the directives) */
    char method[8];
    char path[SERVER_PATH_LOG_MAX];
} server_req;

/* Metrics, registered once at start-up. */
static kiln_metric *m_requests, *m_ok, *m_images, *m_rejected, *m_fail, *m_ratelimit, *m_hang,
    *m_aborted, *m_files, *m_latency, *m_prompts, *m_waiting, *m_overlapping;

static void server_metrics_init(void)
{
    if (m_requests != NULL) return;
    m_requests = kiln_metric_counter("kiln_devprovider_requests_total", "HTTP requests handled.");
    m_ok = kiln_metric_counter("kiln_devprovider_generations_ok_total",
                               "Generation requests answered with images.");
    m_images = kiln_metric_counter("kiln_devprovider_images_total", "Images returned.");
    m_rejected = kiln_metric_counter("kiln_devprovider_requests_rejected_total",
                                     "Requests answered 4xx for bad input or authentication.");
    m_fail = kiln_metric_counter("kiln_devprovider_faults_fail_total",
                                 "Injected !fail answers.");
    m_ratelimit = kiln_metric_counter("kiln_devprovider_faults_ratelimit_total",
                                      "Injected !ratelimit 429 answers.");
    m_hang = kiln_metric_counter("kiln_devprovider_faults_hang_total", "Injected !hang requests.");
    m_aborted = kiln_metric_counter("kiln_devprovider_requests_aborted_total",
                                    "Requests whose client left (or the server stopped) first.");
    m_overlapping = kiln_metric_counter(
        "kiln_devprovider_requests_overlapping_total",
        "Generations that began while another of the same prompt (with directives) was running.");
    m_files = kiln_metric_counter("kiln_devprovider_files_total", "Image files served.");
    m_latency = kiln_metric_histogram_ms("kiln_devprovider_request_ms",
                                         "Time from request to answer, in ms.");
    m_waiting = kiln_metric_gauge("kiln_devprovider_requests_waiting",
                                  "Requests suspended while they wait (latency, !sleep, !hang).");
    m_prompts = kiln_metric_gauge("kiln_devprovider_tracked_prompts",
                                  "Prompts whose attempts are being counted.");
}

/* ---- responses ------------------------------------------------------------ */

/* Queues body (malloc'ed, taken over even on failure) with a status. */
static enum MHD_Result server_reply(struct MHD_Connection *c, server_req *rq, unsigned status,
                                    const char *ctype, char *body, size_t len,
                                    const char *retry_after)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_NO;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES) goto out;
    if (retry_after != NULL &&
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, retry_after) != MHD_YES)
        goto out;
    ret = MHD_queue_response(c, status, resp);
    if (ret == MHD_YES) rq->status = status;
out:
    MHD_destroy_response(resp);
    return ret;
}

static const char *server_error_type(unsigned status)
{
    if (status == 429) return "requests";
    if (status >= 500) return "server_error";
    return "invalid_request_error";
}

/* Queues an OpenAI-shaped error:
 * {"error":{"message":..,"type":..,"param":..|null,"code":..|null}}. */
static enum MHD_Result server_error(struct MHD_Connection *c, server_req *rq, unsigned status,
                                    const char *message, const char *param, const char *code)
{
    const char *p = (param != NULL && param[0] != '\0') ? param : NULL;
    json_t *root = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type",
                             server_error_type(status), "param", p, "code", code);
    if (root == NULL) /* the message quoted invalid UTF-8 from the body */
        root = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message",
                         "The request is not valid.", "type", server_error_type(status), "param",
                         p, "code", code);
    char *s = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (s == NULL) return MHD_NO;
    return server_reply(c, rq, status, "application/json", s, strlen(s),
                        status == 429 ? "1" : NULL);
}

static enum MHD_Result server_text(struct MHD_Connection *c, server_req *rq, unsigned status,
                                   const char *ctype, const char *text)
{
    char *s = strdup(text);
    if (s == NULL) return MHD_NO;
    return server_reply(c, rq, status, ctype, s, strlen(s), NULL);
}

/* ---- waiting -------------------------------------------------------------- */

/* Blocks the calling waiter thread for delay_ms (< 0: until the client
 * leaves), watching the suspended connection's socket. Returns 0 when the
 * delay passed, -1 when the client disconnected or the server is stopping
 * (the request is then dropped). */
static int server_wait(dev_server *s, struct MHD_Connection *c, int64_t delay_ms)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci != NULL ? ci->connect_fd : -1;
    int64_t deadline = delay_ms < 0 ? INT64_MAX : kiln_mono_ms() + delay_ms;
    for (;;) {
        if (atomic_load(&s->stopping)) return -1;
        int64_t now = kiln_mono_ms();
        if (now >= deadline) return 0;
        int64_t slice = deadline - now;
        if (slice > SERVER_WAIT_SLICE_MS) slice = SERVER_WAIT_SLICE_MS;
        if (fd < 0) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = slice * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        /* Only POLLRDHUP is asked for, so bytes a client pipelines do not wake
         * us in a loop; HUP and ERR are always reported. */
        struct pollfd p = {.fd = fd, .events = POLLRDHUP, .revents = 0};
        int r = poll(&p, 1, (int)slice);
        if (r < 0 && errno != EINTR) return -1;
        if (r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) return -1;
    }
}

/* ---- routes --------------------------------------------------------------- */

/* Constant-time check of "Authorization: Bearer <key>". */
static int server_authorized(const dev_server *s, struct MHD_Connection *c)
{
    const char *key = s->opts.api_key;
    if (key == NULL || key[0] == '\0') return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h == NULL || strncmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    size_t hl = strlen(h), kl = strlen(key);
    unsigned char diff = (unsigned char)(hl != kl);
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)(key[i] ^ (i < hl ? h[i] : 0));
    return diff == 0;
}

/* "http://<Host header>" when it looks sane, else the bound loopback address. */
static void server_base_url(const dev_server *s, struct MHD_Connection *c, char *buf, size_t len)
{
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    int ok = host != NULL && host[0] != '\0' && strlen(host) <= SERVER_HOST_MAX;
    for (const char *p = host; ok && *p != '\0'; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             strchr(".-:[]", *p) != NULL;
    if (ok) snprintf(buf, len, "http://%s", host);
    else snprintf(buf, len, "http://127.0.0.1:%u", (unsigned)s->port);
}

/* ---- waiting off MHD's threads ------------------------------------------------ */

typedef struct {
    dev_server *s;
    struct MHD_Connection *c;
    server_req *rq;
    int64_t delay_ms; /* < 0: until the client leaves */
} server_waiter;

static void *server_waiter_main(void *arg)
{
    server_waiter *w = arg;
    dev_server *s = w->s;
    w->rq->wait_rc = server_wait(s, w->c, w->delay_ms);
    w->rq->phase = SERVER_WAIT_DONE;
    kiln_metric_add(m_waiting, -1);
    MHD_resume_connection(w->c); /* MHD calls server_access again, on its thread */
    free(w);
    atomic_fetch_sub(&s->waiting, 1); /* last: dev_server_stop may free s after it */
    return NULL;
}

/* Suspends the request and waits delay_ms on a thread of its own, which
 * resumes it; MHD then calls server_generate again (phase DONE). The count
 * goes up before stopping is read, and dev_server_stop sets stopping before
 * it reads the count: no request is left suspended when MHD stops. */
static enum MHD_Result server_wait_async(dev_server *s, struct MHD_Connection *c, server_req *rq,
                                         int64_t delay_ms)
{
    atomic_fetch_add(&s->waiting, 1);
    if (atomic_load(&s->stopping)) {
        atomic_fetch_sub(&s->waiting, 1);
        rq->phase = SERVER_WAIT_DONE; /* counted as aborted in server_completed */
        rq->wait_rc = -1;
        return MHD_NO;
    }
    server_waiter *w = malloc(sizeof *w);
    if (w == NULL) {
        atomic_fetch_sub(&s->waiting, 1);
        return server_error(c, rq, 500, "Out of memory.", NULL, NULL);
    }
    *w = (server_waiter){.s = s, .c = c, .rq = rq, .delay_ms = delay_ms};
    rq->phase = SERVER_WAIT_RUNNING;
    kiln_metric_add(m_waiting, 1);
    MHD_suspend_connection(c);
    pthread_attr_t attr;
    pthread_t t;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (rc == 0) rc = pthread_create(&t, &attr, server_waiter_main, w);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        LOG_WARN("cannot start a waiter thread err=%d", rc);
        kiln_metric_add(m_waiting, -1);
        free(w);
        rq->wait_rc = -2;
        rq->phase = SERVER_WAIT_DONE;
        MHD_resume_connection(c);
        atomic_fetch_sub(&s->waiting, 1);
    }
    return MHD_YES;
}

/* ---- generations ---------------------------------------------------------- */

/* Answers a generation once any wait is over: the injected failure or rate
 * limit, or the images. */
static enum MHD_Result server_generate_answer(dev_server *s, struct MHD_Connection *c,
                                              server_req *rq)
{
    char msg[512];
    if (rq->phase == SERVER_WAIT_DONE && rq->wait_rc == -2 && rq->act.kind != DEV_ACT_HANG)
        return server_error(c, rq, 500, "dev provider: could not wait.", NULL, NULL);
    if ((rq->phase == SERVER_WAIT_DONE && rq->wait_rc != 0) || rq->act.kind == DEV_ACT_HANG)
        return MHD_NO; /* the client left, or a hang: drop the connection */
    if (rq->act.kind == DEV_ACT_FAIL) {
        snprintf(msg, sizeof msg, "dev provider: injected failure %d (attempt %" PRIu64 ").",
                 rq->act.code, rq->attempt);
        return server_error(c, rq, (unsigned)rq->act.code, msg, NULL, "injected_failure");
    }
    if (rq->act.kind == DEV_ACT_RATELIMIT) {
        snprintf(msg, sizeof msg,
                 "dev provider: injected rate limit (attempt %" PRIu64 "). Retry after 1 s.",
                 rq->attempt);
        return server_error(c, rq, 429, msg, NULL, "rate_limit_exceeded");
    }

    char base[SERVER_HOST_MAX + 16];
    char *body = NULL;
    size_t body_len = 0;
    const dev_images_req *r = &rq->gen;
    server_base_url(s, c, base, sizeof base);
    kiln_status st = dev_images_response(r, r->prompt + rq->image_off,
                                         r->prompt_len - rq->image_off, base, &body, &body_len);
    if (st != KILN_OK)
        return server_error(c, rq, 500, "dev provider: could not render the image.", NULL, NULL);
    kiln_metric_add(m_ok, 1);
    kiln_metric_add(m_images, (int64_t)r->n);
    return server_reply(c, rq, 200, "application/json", body, body_len, NULL); /* takes body */
}

static enum MHD_Result server_generate(dev_server *s, struct MHD_Connection *c, server_req *rq)
{
    if (rq->phase == SERVER_WAIT_DONE) return server_generate_answer(s, c, rq);
    if (rq->phase == SERVER_WAIT_RUNNING) return MHD_YES; /* not resumed yet */

    char param[32] = "", msg[512] = "";
    if (!server_authorized(s, c)) {
        kiln_metric_add(m_rejected, 1);
        return server_error(c, rq, 401,
                            "Incorrect API key provided. You can set it with KILN_PROVIDER_KEY.",
                            NULL, "invalid_api_key");
    }
    if (rq->too_large) {
        kiln_metric_add(m_rejected, 1);
        snprintf(msg, sizeof msg, "The request body is larger than %d bytes.", DEV_BODY_MAX);
        return server_error(c, rq, 413, msg, NULL, "payload_too_large");
    }
    dev_images_req *r = &rq->gen; /* cleared in server_completed */
    kiln_status st = dev_images_parse(rq->body != NULL ? rq->body : "", rq->len, s->opts.default_w,
                                      s->opts.default_h, r, param, sizeof param, msg, sizeof msg);
    if (st == KILN_EINVAL) {
        kiln_metric_add(m_rejected, 1);
        return server_error(c, rq, 400, msg, param, param[0] == '\0' ? "invalid_json" : NULL);
    }
    if (st != KILN_OK) return server_error(c, rq, 500, "Out of memory.", NULL, NULL);

    dev_directives d;
    if (dev_directives_parse(r->prompt, &d) != KILN_OK)
        return server_error(c, rq, 500, "dev provider: internal error.", NULL, NULL);
    uint64_t attempt = 1, running_before = 0;
    /* Prompts with directives are counted: their fault scripts need the
     * attempt number, and a second request of one while the first still runs
     * means a client ran one job twice at once (the chaos test looks for it). */
    if (dev_directives_counted(&d) || d.sleep_ms >= 0) {
        if (dev_hash_key(r->prompt, r->prompt_len, rq->key) != KILN_OK ||
            dev_attempts_begin(s->attempts, rq->key, &attempt, &running_before) != KILN_OK)
            return server_error(c, rq, 500, "dev provider: internal error.", NULL, NULL);
        rq->tracked = 1;
        rq->attempt = attempt;
        kiln_metric_set(m_prompts, (int64_t)dev_attempts_size(s->attempts));
        if (running_before > 0) {
            kiln_metric_add(m_overlapping, 1);
            LOG_WARN("overlapping request attempt=%" PRIu64 " running=%" PRIu64 " prompt_hash=%016" PRIx64,
                     attempt, running_before, rq->key[0]);
        }
    }
    rq->act = dev_directives_action(&d, attempt);
    rq->image_off = d.image_off;
    uint64_t phash = rq->key[0];
    int64_t delay = d.sleep_ms >= 0 ? d.sleep_ms : s->opts.latency_ms;

    switch (rq->act.kind) {
    case DEV_ACT_HANG:
        kiln_metric_add(m_hang, 1);
        LOG_INFO("fault injected kind=hang attempt=%" PRIu64 " prompt_hash=%016" PRIx64, attempt,
                 phash);
        return server_wait_async(s, c, rq, -1);
    case DEV_ACT_FAIL:
        kiln_metric_add(m_fail, 1);
        LOG_INFO("fault injected kind=fail code=%d attempt=%" PRIu64 " sleep_ms=%" PRId64
                 " prompt_hash=%016" PRIx64,
                 rq->act.code, attempt, delay, phash);
        break;
    case DEV_ACT_RATELIMIT:
        kiln_metric_add(m_ratelimit, 1);
        LOG_INFO("fault injected kind=ratelimit code=429 attempt=%" PRIu64 " sleep_ms=%" PRId64
                 " prompt_hash=%016" PRIx64,
                 attempt, delay, phash);
        break;
    case DEV_ACT_SUCCEED:
        break;
    }
    if (delay > 0) return server_wait_async(s, c, rq, delay);
    return server_generate_answer(s, c, rq);
}

static enum MHD_Result server_file(struct MHD_Connection *c, server_req *rq, const char *name)
{
    uint64_t seed;
    unsigned w, h;
    if (dev_images_file_parse(name, &seed, &w, &h) != KILN_OK)
        return server_error(c, rq, 404, "No such file.", NULL, "not_found");
    uint8_t *png = NULL;
    size_t len = 0;
    if (dev_piccache_png(seed, w, h, &png, &len) != KILN_OK)
        return server_error(c, rq, 500, "dev provider: could not render the image.", NULL, NULL);
    kiln_metric_add(m_files, 1);
    return server_reply(c, rq, 200, "image/png", (char *)png, len, NULL);
}

static enum MHD_Result server_metrics(struct MHD_Connection *c, server_req *rq)
{
    char *text = NULL;
    size_t len = 0;
    if (kiln_metrics_render(&text, &len) != KILN_OK)
        return server_text(c, rq, 500, "text/plain; charset=utf-8", "metrics unavailable\n");
    return server_reply(c, rq, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
}

static enum MHD_Result server_route(dev_server *s, struct MHD_Connection *c, const char *url,
                                    const char *method, server_req *rq)
{
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, "/healthz") == 0 && get)
        return server_text(c, rq, 200, "text/plain; charset=utf-8", "ok\n");
    if (strcmp(url, "/metrics") == 0 && get) return server_metrics(c, rq);
    if (strcmp(url, SERVER_GEN_PATH) == 0) {
        if (strcmp(method, "POST") == 0) return server_generate(s, c, rq);
        return server_error(c, rq, 405, "Only POST is allowed on this path.", NULL,
                            "method_not_allowed");
    }
    if (strncmp(url, SERVER_FILES_PREFIX, strlen(SERVER_FILES_PREFIX)) == 0 && get)
        return server_file(c, rq, url + strlen(SERVER_FILES_PREFIX));
    return server_error(c, rq, 404, "Unknown path.", NULL, "not_found");
}

/* ---- libmicrohttpd callbacks ------------------------------------------------ */

/* MHD calls this several times per request: once with the headers, once per
 * body chunk, once more at the end (the body is then complete). */
static enum MHD_Result server_access(void *cls, struct MHD_Connection *c, const char *url,
                                     const char *method, const char *version,
                                     const char *upload_data, size_t *upload_data_size,
                                     void **con_cls)
{
    (void)version;
    dev_server *s = cls;
    server_req *rq = *con_cls;
    if (rq == NULL) {
        rq = calloc(1, sizeof *rq);
        if (rq == NULL) return MHD_NO;
        rq->start_us = kiln_mono_us();
        snprintf(rq->method, sizeof rq->method, "%s", method);
        snprintf(rq->path, sizeof rq->path, "%s", url);
        *con_cls = rq;
        /* A declared oversized body is refused before it is read. */
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > DEV_BODY_MAX) {
            char msg[128];
            snprintf(msg, sizeof msg, "The request body is larger than %d bytes.", DEV_BODY_MAX);
            return server_error(c, rq, 413, msg, NULL, "payload_too_large");
        }
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0; /* consumed (or discarded once over the cap) */
        if (rq->too_large) return MHD_YES;
        if (rq->len + n > DEV_BODY_MAX) {
            rq->too_large = 1;
            free(rq->body);
            rq->body = NULL;
            rq->len = rq->cap = 0;
            return MHD_YES;
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap != 0 ? rq->cap : 1024;
            while (cap < rq->len + n + 1) cap *= 2;
            char *nb = realloc(rq->body, cap);
            if (nb == NULL) return MHD_NO;
            rq->body = nb;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload_data, n);
        rq->len += n;
        rq->body[rq->len] = '\0';
        return MHD_YES;
    }
    return server_route(s, c, url, method, rq);
}

static void server_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                             enum MHD_RequestTerminationCode toe)
{
    (void)c;
    dev_server *s = cls;
    server_req *rq = *con_cls;
    if (rq == NULL) return;
    if (rq->tracked) dev_attempts_end(s->attempts, rq->key);
    double ms = (double)(kiln_mono_us() - rq->start_us) / 1000.0;
    kiln_metric_add(m_requests, 1);
    /* A request that waited and got no answer: its client left, or the
     * server stopped. Counted here because MHD may close a resumed
     * connection whose client is gone without calling server_access again. */
    if (rq->phase != SERVER_WAIT_NONE && rq->status == 0) kiln_metric_add(m_aborted, 1);
    kiln_metric_observe_ms(m_latency, ms);
    LOG_DEBUG("request method=%s path=%s status=%u attempt=%" PRIu64 " ms=%.1f end=%s",
              rq->method, rq->path, rq->status, rq->attempt, ms,
              toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok" : "aborted");
    dev_images_req_clear(&rq->gen);
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}


/* ---- lifecycle ------------------------------------------------------------ */

kiln_status dev_server_start(const dev_server_opts *o, dev_server **out)
{
    if (o == NULL || out == NULL || o->addr == NULL || o->default_w == 0 || o->default_h == 0)
        return KILN_EINVAL;
    kiln_status st = KILN_OK;
    struct sockaddr_storage ss;
    size_t sslen = 0;
    dev_server *s = calloc(1, sizeof *s);
    if (s == NULL) return KILN_ENOMEM;
    s->opts = *o;
    atomic_init(&s->stopping, false);
    atomic_init(&s->waiting, 0);
    server_metrics_init();

    st = kiln_parse_listen_addr(o->addr, &ss, &sslen);
    if (st != KILN_OK) goto out; /* kiln_parse_listen_addr logged why */
    st = dev_attempts_create(o->max_prompts != 0 ? o->max_prompts : DEV_ATTEMPTS_DEFAULT_MAX,
                             &s->attempts);
    if (st != KILN_OK) goto out;

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(
        flags, kiln_listen_addr_port(&ss), NULL, NULL, server_access, s, MHD_OPTION_EXTERNAL_LOGGER, kiln_log_mhd, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)SERVER_THREADS, MHD_OPTION_CONNECTION_LIMIT, (unsigned)DEV_CONN_MAX, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)SERVER_IDLE_TIMEOUT_S, /* MHD's default SO_REUSEADDR, no SO_REUSEPORT (gateway/server.c) */
        MHD_OPTION_NOTIFY_COMPLETED, server_completed, s, MHD_OPTION_END);
    if (s->mhd == NULL) {
        LOG_ERROR("cannot listen addr=%s (address in use or not local?)", o->addr);
        st = KILN_EIO;
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di != NULL ? di->port : 0;
    *out = s;
    s = NULL;
out:
    if (s != NULL) {
        dev_attempts_destroy(s->attempts);
        free(s);
    }
    return st;
}

uint16_t dev_server_port(const dev_server *s)
{
    return s != NULL ? s->port : 0;
}

void dev_server_stop(dev_server *s)
{
    if (s == NULL) return;
    /* Waiter threads see the flag within SERVER_WAIT_SLICE_MS and resume
     * their requests: MHD must not stop with a request suspended. */
    atomic_store(&s->stopping, true);
    while (atomic_load(&s->waiting) > 0) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = SERVER_STOP_POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (s->mhd != NULL) MHD_stop_daemon(s->mhd);
    dev_attempts_destroy(s->attempts);
    dev_piccache_clear();
    free(s);
}
