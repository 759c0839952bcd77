/* natsconn.c - the NATS connection every binary uses: reconnects forever,
 * sends as soon as possible, logs connection events. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ackgate.h"
#include "clock.h"
#include "log.h"
#include "natsconn.h"

#define NATSCONN_MAX_SERVERS 32
#define NATSCONN_URLS_MAX 4096
#define NATSCONN_RETRY_MS 250
#define NATSCONN_RECONNECT_BUF (8 * 1024 * 1024) /* publishes buffered while reconnecting */
#define NATSCONN_SUB_END_WAIT_MS 5000 /* for a message handler's last call to return */

/* Whether [start, end) is [user[:password]@]host[:port] with a port of
 * 1-65535 when given (host: a name, an IPv4 address or [IPv6]). */
static int natsconn_hostport_ok(const char *start, const char *end)
{
    for (const char *p = end; p > start; p--)
        if (p[-1] == '@') {
            start = p;
            break;
        }
    if (start == end) return 0;
    const char *port = NULL;
    if (*start == '[') {
        const char *close = memchr(start, ']', (size_t)(end - start));
        if (close == NULL || close == start + 1) return 0;
        if (close + 1 < end) {
            if (close[1] != ':') return 0;
            port = close + 2;
        }
    } else {
        for (const char *p = start; p < end; p++) {
            if (*p == ':') {
                if (port != NULL || p == start) return 0;
                port = p + 1;
            } else if (port == NULL && !(*p == '-' || *p == '.' || *p == '_' ||
                                         (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                                         (*p >= 'A' && *p <= 'Z'))) {
                return 0;
            }
        }
    }
    if (port == NULL) return 1;
    if (port == end || end - port > 5) return 0;
    long v = 0;
    for (const char *p = port; p < end; p++) {
        if (*p < '0' || *p > '9') return 0;
        v = v * 10 + (*p - '0');
    }
    return v >= 1 && v <= 65535;
}

typedef struct {
    int n;
    char *err;
    size_t errlen;
} natsconn_check;

static int natsconn_check_one(const char *s, size_t len, natsconn_check *c)
{
    c->n++;
    if (c->n > NATSCONN_MAX_SERVERS) {
        snprintf(c->err, c->errlen, "more than %d servers", NATSCONN_MAX_SERVERS);
        return -1;
    }
    const char *end = s + len, *host = s;
    const char *sep = NULL;
    for (const char *p = s; p + 3 <= end; p++)
        if (memcmp(p, "://", 3) == 0) {
            sep = p;
            break;
        }
    if (sep != NULL) {
        size_t slen = (size_t)(sep - s);
        if (!((slen == 4 && strncasecmp(s, "nats", 4) == 0) ||
              (slen == 3 && strncasecmp(s, "tls", 3) == 0))) {
            snprintf(c->err, c->errlen, "server %d: the scheme must be nats:// or tls://", c->n);
            return -1;
        }
        host = sep + 3;
    }
    if (!natsconn_hostport_ok(host, end)) {
        snprintf(c->err, c->errlen,
                 "server %d: want [nats:// or tls://][user[:password]@]host[:port], port 1-65535",
                 c->n);
        return -1;
    }
    return 0;
}

kiln_status kiln_nats_urls_check(const char *urls, char *err, size_t errlen)
{
    natsconn_check c = {0, err, errlen};
    if (urls == NULL || strlen(urls) > NATSCONN_URLS_MAX) {
        snprintf(err, errlen, "must be 1-%d characters", NATSCONN_URLS_MAX);
        return KILN_EINVAL;
    }
    /* Servers are split on commas and spaces, as kiln_nats_connect_opts
     * hands them to natsOptions_SetServers. */
    for (const char *p = urls + strspn(urls, ", "); *p != '\0'; p += strspn(p, ", ")) {
        size_t len = strcspn(p, ", ");
        if (natsconn_check_one(p, len, &c) != 0) return KILN_EINVAL;
        p += len;
    }
    if (c.n == 0) {
        snprintf(err, errlen, "names no server (e.g. nats://127.0.0.1:4222)");
        return KILN_EINVAL;
    }
    return KILN_OK;
}

void kiln_nats_urls_redact(const char *urls, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0) return;
    for (const char *p = urls; *p != '\0' && o + 1 < outlen;) {
        size_t len = strcspn(p, ", ");
        const char *at = NULL, *first_at = NULL;
        for (size_t i = 0; i < len; i++)
            if (p[i] == '@') {
                at = p + i;
                if (first_at == NULL) first_at = at;
            }
        size_t keep = 0; /* a scheme, when it comes before any '@' */
        for (const char *q = p; first_at != NULL && q + 3 <= first_at; q++)
            if (memcmp(q, "://", 3) == 0) {
                keep = (size_t)(q - p) + 3;
                break;
            }
        if (at != NULL) {
            o += (size_t)snprintf(out + o, outlen - o, "%.*s***%.*s", (int)keep, p,
                                  (int)(p + len - at), at);
        } else {
            o += (size_t)snprintf(out + o, outlen - o, "%.*s", (int)len, p);
        }
        if (o >= outlen) o = outlen - 1;
        p += len;
        size_t seps = strspn(p, ", ");
        o += (size_t)snprintf(out + o, outlen - o, "%.*s", (int)seps, p);
        if (o >= outlen) o = outlen - 1;
        p += seps;
    }
    out[o] = '\0';
}

kiln_status kiln_nats_status(natsStatus s)
{
    switch (s) {
    case NATS_OK: return KILN_OK;
    case NATS_TIMEOUT: return KILN_ETIMEOUT;
    case NATS_NO_MEMORY: return KILN_ENOMEM;
    case NATS_NO_RESPONDERS:
    case NATS_NOT_YET_CONNECTED:
    case NATS_NO_SERVER:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR: return KILN_EUNAVAILABLE;
    default: return KILN_ENATS;
    }
}

kiln_status kiln_js_msg_present(jsCtx *js, const char *stream, uint64_t seq, int64_t wait_ms,
                                natsStatus *ns, jsErrCode *jerr)
{
    natsMsg *m = NULL;
    jsOptions jo;
    *jerr = 0;
    *ns = jsOptions_Init(&jo);
    if (*ns != NATS_OK) return KILN_ENATS;
    jo.Wait = wait_ms;
    *ns = js_GetMsg(&m, js, stream, seq, &jo, jerr);
    natsMsg_Destroy(m);
    if (*ns == NATS_OK) return KILN_OK;
    if (*jerr == JSNoMessageFoundErr || (*ns == NATS_NOT_FOUND && *jerr == 0)) return KILN_ENOTFOUND;
    return KILN_ENATS;
}

static _Atomic int64_t natsconn_reconnected_at = INT64_MIN / 2;

int64_t kiln_nats_reconnected_at(void)
{
    return atomic_load(&natsconn_reconnected_at);
}

/* These callbacks run on nats.c's own callback thread. */
static void natsconn_on_disconnected(natsConnection *nc, void *closure)
{
    (void)closure;
    if (natsConnection_IsClosed(nc)) return; /* a close, not an outage: on_closed logs it */
    LOG_WARN("nats disconnected; reconnecting");
}

static void natsconn_on_reconnected(natsConnection *nc, void *closure)
{
    (void)closure;
    char url[256] = "", shown[256];
    if (natsConnection_GetConnectedUrl(nc, url, sizeof url) != NATS_OK) url[0] = '\0';
    kiln_nats_urls_redact(url, shown, sizeof shown);
    atomic_store(&natsconn_reconnected_at, kiln_mono_ms());
    LOG_INFO("nats reconnected url=%s", shown);
}

static void natsconn_on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    LOG_INFO("nats connection closed");
}

static void natsconn_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err,
                              void *closure)
{
    (void)nc;
    (void)closure;
    const char *subj = NULL;
    if (sub == NULL || natsSubscription_GetSubject(sub) == NULL) subj = "-";
    else subj = natsSubscription_GetSubject(sub);
    LOG_WARN("nats async error status=%s subject=%s", natsStatus_GetText(err), subj);
}

static atomic_bool natsconn_stoppable; /* kiln_nats_stop_on_signals() */

void kiln_nats_stop_on_signals(void) { atomic_store(&natsconn_stoppable, true); }

bool kiln_nats_transient(kiln_status st)
{
    return st == KILN_ETIMEOUT || st == KILN_EUNAVAILABLE;
}

bool kiln_nats_wait_or_stop(int64_t ms)
{
    if (!atomic_load(&natsconn_stoppable)) {
        struct timespec left = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0) {
        }
        return false;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    for (;;) {
        int sig = sigtimedwait(&stop, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            LOG_INFO("stop signal while connecting to NATS signal=%s",
                     sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return true;
        }
        if (sig < 0 && errno == EINTR) continue; /* another signal; the wait starts over */
        return false;                            /* EAGAIN: the time is up */
    }
}

/* Errors that another try cannot fix. */
static int natsconn_permanent(natsStatus s)
{
    return s == NATS_INVALID_ARG || s == NATS_NO_MEMORY || s == NATS_ADDRESS_MISSING ||
           s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED ||
           s == NATS_SECURE_CONNECTION_WANTED || s == NATS_SECURE_CONNECTION_REQUIRED ||
           s == NATS_SSL_ERROR || s == NATS_FAILED_TO_INITIALIZE;
}

void kiln_nats_opts_init(kiln_nats_opts *o)
{
    memset(o, 0, sizeof *o);
    o->send_asap = true;
}

kiln_status kiln_nats_connect_async(const char *urls, const char *name, int64_t initial_timeout_ms,
                                    int64_t max_pending, jsPubAckHandler ack_handler,
                                    void *ack_closure, natsConnection **nc, jsCtx **js)
{
    kiln_nats_opts o;
    kiln_nats_opts_init(&o);
    o.name = name;
    o.initial_timeout_ms = initial_timeout_ms;
    o.max_pending = max_pending;
    o.ack_handler = ack_handler;
    o.ack_closure = ack_closure;
    return kiln_nats_connect_opts(urls, &o, nc, js);
}

kiln_status kiln_nats_connect_opts(const char *urls, const kiln_nats_opts *o, natsConnection **nc,
                                   jsCtx **js)
{
    kiln_status st = KILN_OK;
    natsStatus s = NATS_OK;
    natsOptions *opts = NULL;
    natsConnection *conn = NULL;
    jsCtx *ctx = NULL;
    kiln_ackgate *gate = NULL;
    char *copy = NULL;
    const char *servers[NATSCONN_MAX_SERVERS];
    int nservers = 0;

    char why[160], shown[NATSCONN_URLS_MAX + 1];
    if (o == NULL || nc == NULL) return KILN_EINVAL;
    if (kiln_nats_urls_check(urls, why, sizeof why) != KILN_OK) {
        LOG_ERROR("nats server list invalid reason=\"%s\"", why);
        return KILN_EINVAL;
    }
    kiln_nats_urls_redact(urls, shown, sizeof shown);
    const char *name = o->name;
    int64_t initial_timeout_ms = o->initial_timeout_ms;
    copy = strdup(urls);
    if (copy == NULL) return KILN_ENOMEM;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
        if (nservers == NATSCONN_MAX_SERVERS) {
            LOG_ERROR("nats too many servers max=%d", NATSCONN_MAX_SERVERS);
            st = KILN_EINVAL;
            goto out;
        }
        servers[nservers++] = tok;
    }
    if (nservers == 0) {
        st = KILN_EINVAL;
        goto out;
    }

    s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetServers(opts, servers, nservers);
    if (s == NATS_OK && name != NULL) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, NATSCONN_RECONNECT_BUF);
    if (s == NATS_OK && o->send_asap) s = natsOptions_SetSendAsap(opts, true);
    if (s == NATS_OK && o->global_delivery) s = natsOptions_UseGlobalMessageDelivery(opts, true);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, natsconn_on_disconnected, NULL);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, natsconn_on_reconnected, NULL);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, natsconn_on_closed, NULL);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, natsconn_on_error, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("nats options status=%s", natsStatus_GetText(s));
        st = kiln_nats_status(s);
        goto out;
    }

    int64_t deadline = kiln_mono_ms() + (initial_timeout_ms > 0 ? initial_timeout_ms : 0);
    int warned = 0;
    for (;;) {
        s = natsConnection_Connect(&conn, opts);
        if (s == NATS_OK) break;
        conn = NULL;
        if (natsconn_permanent(s) || kiln_mono_ms() + NATSCONN_RETRY_MS > deadline) {
            LOG_ERROR("nats connect failed urls=%s status=%s", shown, natsStatus_GetText(s));
            st = kiln_nats_status(s);
            goto out;
        }
        if (!warned) {
            LOG_WARN("nats connect failed, retrying urls=%s status=%s timeout_ms=%lld", shown,
                     natsStatus_GetText(s), (long long)initial_timeout_ms);
            warned = 1;
        }
        if (kiln_nats_wait_or_stop(NATSCONN_RETRY_MS)) {
            st = KILN_ESTOPPED;
            goto out;
        }
    }

    if (js != NULL) {
        jsOptions jo;
        s = jsOptions_Init(&jo);
        if (s == NATS_OK) {
            if (o->max_pending > 0) jo.PublishAsync.MaxPending = o->max_pending;
            if (o->js_wait_ms > 0) jo.Wait = o->js_wait_ms;
            if (o->ack_handler != NULL) {
                /* Its calls must end by kiln_nats_close (ackgate.c). */
                gate = kiln_ackgate_open(o->ack_handler, o->ack_closure);
                if (gate == NULL) s = NATS_NO_MEMORY;
                jo.PublishAsync.AckHandler = kiln_ackgate_on_ack;
                jo.PublishAsync.AckHandlerClosure = gate;
            }
            if (s == NATS_OK) s = natsConnection_JetStream(&ctx, conn, &jo);
        }
        if (s != NATS_OK) {
            LOG_ERROR("nats jetstream context status=%s", natsStatus_GetText(s));
            ctx = NULL;
            st = kiln_nats_status(s);
            goto out;
        }
    }
    char url[256] = "", url_shown[256];
    if (natsConnection_GetConnectedUrl(conn, url, sizeof url) != NATS_OK) url[0] = '\0';
    kiln_nats_urls_redact(url, url_shown, sizeof url_shown);
    LOG_INFO("nats connected url=%s name=%s", url_shown, name != NULL ? name : "");

    *nc = conn;
    conn = NULL;
    if (js != NULL) {
        if (gate != NULL) kiln_ackgate_bind(gate, ctx);
        *js = ctx;
        ctx = NULL;
    }

out:
    jsCtx_Destroy(ctx);
    if (conn != NULL) {
        natsConnection_Close(conn);
        natsConnection_Destroy(conn);
    }
    natsOptions_Destroy(opts);
    free(copy);
    return st;
}

kiln_status kiln_nats_connect(const char *urls, const char *name, int64_t initial_timeout_ms,
                              natsConnection **nc, jsCtx **js)
{
    return kiln_nats_connect_async(urls, name, initial_timeout_ms, 0, NULL, NULL, nc, js);
}

void kiln_nats_close(natsConnection *nc, jsCtx *js)
{
    jsCtx_Destroy(js);
    if (nc != NULL) {
        /* Push out what is still buffered (SendAsap makes this usually nothing). */
        if (natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED)
            (void)natsConnection_FlushTimeout(nc, 1000);
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
    kiln_ackgate_close(js); /* no ack handler call runs after this */
}

/* The end of an async subscription's handler calls, told by libnats' on-
 * complete callback. Shared by kiln_nats_unsubscribe and the callback: the
 * last of the two frees it, so a wait given up on leaves nothing dangling. */
typedef struct {
    atomic_int refs;
    atomic_bool done;
} natsconn_sub_end;

static void natsconn_sub_end_release(natsconn_sub_end *e)
{
    if (atomic_fetch_sub(&e->refs, 1) == 1) free(e);
}

static void natsconn_on_sub_complete(void *closure)
{
    natsconn_sub_end *e = closure;
    atomic_store(&e->done, true);
    natsconn_sub_end_release(e);
}

void kiln_nats_unsubscribe(natsSubscription **sub)
{
    if (sub == NULL || *sub == NULL) return;
    /* A handler call may still be running, or about to start, on another
     * thread after Unsubscribe returns, and callers free what it uses next.
     * libnats says when the last one returned (async subscriptions only:
     * for a sync one, or one already closed, this fails and nothing runs). */
    natsconn_sub_end *e = calloc(1, sizeof *e);
    if (e != NULL) {
        atomic_init(&e->refs, 2);
        atomic_init(&e->done, false);
        if (natsSubscription_SetOnCompleteCB(*sub, natsconn_on_sub_complete, e) != NATS_OK) {
            free(e);
            e = NULL;
        }
    }
    natsSubscription_Unsubscribe(*sub);
    natsSubscription_Destroy(*sub);
    *sub = NULL;
    if (e == NULL) return;
    int64_t until = kiln_mono_ms() + NATSCONN_SUB_END_WAIT_MS;
    const struct timespec tick = {0, 1000000};
    while (!atomic_load(&e->done) && kiln_mono_ms() < until) nanosleep(&tick, NULL);
    if (!atomic_load(&e->done))
        LOG_WARN("nats unsubscribe: a message handler still runs after %d ms",
                 NATSCONN_SUB_END_WAIT_MS);
    natsconn_sub_end_release(e);
}

int kiln_nats_drop_unacked(jsCtx *js)
{
    natsMsgList stale = {0};
    if (js == NULL || js_PublishAsyncGetPendingList(&stale, js) != NATS_OK) return 0;
    int n = stale.Count;
    natsMsgList_Destroy(&stale);
    return n;
}
