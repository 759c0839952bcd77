/* metrics.c - process-wide counters, gauges and latency histograms in the
 * Prometheus text format, and an optional /metrics listener. */
#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics.h"

#define METRICS_MAX 256
#define METRICS_BUCKETS 14 /* finite bounds; +Inf is the count */
#define METRICS_ADDR_MAX 512

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

static const double metrics_bounds[METRICS_BUCKETS] = {0.5, 1,   2,   5,    10,   25,   50,
                                                       100, 250, 500, 1000, 2500, 5000, 10000};
static const char *const metrics_bound_text[METRICS_BUCKETS] = {
    "0.5", "1", "2", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000"};

struct kiln_metric {
    const char *name;
    const char *labels; /* NULL, or `k="v"` pairs: one member of a family */
    const char *help;
    metric_type type;
    _Atomic int64_t value;                      /* counter, gauge */
    _Atomic uint64_t buckets[METRICS_BUCKETS];  /* histogram: per bucket, not cumulative */
    _Atomic uint64_t count;                     /* histogram */
    _Atomic int64_t sum_us;                     /* histogram: sum in microseconds */
};

static struct kiln_metric metrics_reg[METRICS_MAX];
static _Atomic size_t metrics_n;
static pthread_mutex_t metrics_mu = PTHREAD_MUTEX_INITIALIZER;

static bool metrics_same_labels(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static kiln_metric *metrics_register(const char *name, const char *labels, const char *help,
                                     metric_type type)
{
    if (name == NULL) return NULL;
    kiln_metric *m = NULL;
    pthread_mutex_lock(&metrics_mu);
    size_t n = atomic_load(&metrics_n);
    /* Registering the same name and labels again returns the existing
     * metric; a family's members share one type. */
    for (size_t i = 0; i < n; i++) {
        if (strcmp(metrics_reg[i].name, name) != 0) continue;
        if (metrics_reg[i].type != type) goto out;
        if (metrics_same_labels(metrics_reg[i].labels, labels)) {
            m = &metrics_reg[i];
            goto out;
        }
    }
    if (n == METRICS_MAX) goto out;
    m = &metrics_reg[n];
    m->name = name;
    m->labels = labels;
    m->help = help != NULL ? help : "";
    m->type = type;
    atomic_store(&metrics_n, n + 1);
out:
    pthread_mutex_unlock(&metrics_mu);
    return m;
}

kiln_metric *kiln_metric_counter(const char *name, const char *help)
{
    return metrics_register(name, NULL, help, METRIC_COUNTER);
}

kiln_metric *kiln_metric_gauge(const char *name, const char *help)
{
    return metrics_register(name, NULL, help, METRIC_GAUGE);
}

kiln_metric *kiln_metric_gauge_labeled(const char *name, const char *labels, const char *help)
{
    if (labels == NULL || labels[0] == '\0') return NULL;
    return metrics_register(name, labels, help, METRIC_GAUGE);
}

kiln_metric *kiln_metric_histogram_ms(const char *name, const char *help)
{
    return metrics_register(name, NULL, help, METRIC_HISTOGRAM);
}

void kiln_metric_add(kiln_metric *m, int64_t v)
{
    if (m == NULL || m->type == METRIC_HISTOGRAM) return;
    atomic_fetch_add_explicit(&m->value, v, memory_order_relaxed);
}

void kiln_metric_set(kiln_metric *m, int64_t v)
{
    if (m == NULL || m->type == METRIC_HISTOGRAM) return;
    atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

int64_t kiln_metric_value(const kiln_metric *m)
{
    if (m == NULL || m->type == METRIC_HISTOGRAM) return 0;
    return atomic_load_explicit(&m->value, memory_order_relaxed);
}

void kiln_metric_observe_ms(kiln_metric *m, double ms)
{
    if (m == NULL || m->type != METRIC_HISTOGRAM || isnan(ms)) return;
    if (ms < 0) ms = 0;
    if (ms > 1e12) ms = 1e12; /* keeps the microsecond sum far from overflow */
    for (size_t i = 0; i < METRICS_BUCKETS; i++) {
        if (ms <= metrics_bounds[i]) {
            atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&m->sum_us, (int64_t)llround(ms * 1000.0), memory_order_relaxed);
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} metrics_sb;

static void metrics_printf(metrics_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void metrics_printf(metrics_sb *sb, const char *fmt, ...)
{
    if (sb->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->failed = 1;
            return;
        }
        if ((size_t)n < sb->cap - sb->len) {
            sb->len += (size_t)n;
            return;
        }
        size_t ncap = sb->cap * 2 + (size_t)n;
        char *nb = realloc(sb->buf, ncap);
        if (nb == NULL) {
            sb->failed = 1;
            return;
        }
        sb->buf = nb;
        sb->cap = ncap;
    }
}

/* True when an earlier metric has the name of metric i (its family was rendered). */
static bool metrics_family_seen(size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(metrics_reg[k].name, metrics_reg[i].name) == 0) return true;
    return false;
}

/* The sample line of a counter or gauge. */
static void metrics_sample(metrics_sb *sb, kiln_metric *m)
{
    long long v = (long long)atomic_load_explicit(&m->value, memory_order_relaxed);
    if (m->labels != NULL)
        metrics_printf(sb, "%s{%s} %lld\n", m->name, m->labels, v);
    else
        metrics_printf(sb, "%s %lld\n", m->name, v);
}

kiln_status kiln_metrics_render(char **out, size_t *len)
{
    if (out == NULL) return KILN_EINVAL;
    metrics_sb sb = {.buf = malloc(4096), .len = 0, .cap = 4096, .failed = 0};
    if (sb.buf == NULL) return KILN_ENOMEM;
    sb.buf[0] = '\0';
    size_t n = atomic_load(&metrics_n);
    for (size_t i = 0; i < n; i++) {
        kiln_metric *m = &metrics_reg[i];
        if (metrics_family_seen(i)) continue; /* rendered with its family's first */
        const char *type = m->type == METRIC_COUNTER ? "counter"
                           : m->type == METRIC_GAUGE ? "gauge"
                                                     : "histogram";
        metrics_printf(&sb, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, type);
        if (m->type != METRIC_HISTOGRAM) {
            for (size_t j = i; j < n; j++)
                if (strcmp(metrics_reg[j].name, m->name) == 0) metrics_sample(&sb, &metrics_reg[j]);
            continue;
        }
        /* Read count first: buckets may then run slightly ahead, never behind. */
        uint64_t count = atomic_load_explicit(&m->count, memory_order_relaxed);
        uint64_t cum = 0;
        for (size_t b = 0; b < METRICS_BUCKETS; b++) {
            cum += atomic_load_explicit(&m->buckets[b], memory_order_relaxed);
            if (cum > count) cum = count;
            metrics_printf(&sb, "%s_bucket{le=\"%s\"} %llu\n", m->name, metrics_bound_text[b],
                           (unsigned long long)cum);
        }
        metrics_printf(&sb, "%s_bucket{le=\"+Inf\"} %llu\n", m->name, (unsigned long long)count);
        double sum = (double)atomic_load_explicit(&m->sum_us, memory_order_relaxed) / 1000.0;
        metrics_printf(&sb, "%s_sum %.3f\n%s_count %llu\n", m->name, sum, m->name,
                       (unsigned long long)count);
    }
    if (sb.failed) {
        free(sb.buf);
        return KILN_ENOMEM;
    }
    *out = sb.buf;
    if (len != NULL) *len = sb.len;
    return KILN_OK;
}

kiln_status kiln_parse_listen_addr(const char *addr, struct sockaddr_storage *out, size_t *outlen)
{
    if (addr == NULL || out == NULL || outlen == NULL) return KILN_EINVAL;
    size_t alen = strlen(addr);
    if (alen == 0 || alen >= METRICS_ADDR_MAX) {
        LOG_ERROR("listen address invalid addr=\"%s\" reason=\"empty or too long\"", addr);
        return KILN_EINVAL;
    }
    char host[METRICS_ADDR_MAX];
    const char *port;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':') {
            LOG_ERROR("listen address invalid addr=\"%s\" reason=\"want [v6]:port\"", addr);
            return KILN_EINVAL;
        }
        size_t hl = (size_t)(close - addr - 1);
        memcpy(host, addr + 1, hl);
        host[hl] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL || memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
            LOG_ERROR("listen address invalid addr=\"%s\" reason=\"want host:port\"", addr);
            return KILN_EINVAL;
        }
        size_t hl = (size_t)(colon - addr);
        memcpy(host, addr, hl);
        host[hl] = '\0';
        port = colon + 1;
    }
    long pnum = 0;
    size_t pdigits = 0;
    for (const char *p = port; *p != '\0'; p++, pdigits++) {
        if (*p < '0' || *p > '9' || pdigits >= 5) {
            pdigits = 0;
            break;
        }
        pnum = pnum * 10 + (*p - '0');
    }
    if (pdigits == 0 || pnum > 65535) {
        LOG_ERROR("listen address invalid addr=\"%s\" reason=\"port must be 0-65535\"", addr);
        return KILN_EINVAL;
    }

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    size_t sslen;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (host[0] == '\0') {
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_ANY);
        sslen = sizeof *v4;
    } else if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        sslen = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        sslen = sizeof *v6;
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_ADDRCONFIG;
        int rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0 || res == NULL) {
            LOG_ERROR("listen address invalid addr=\"%s\" reason=\"cannot resolve host: %s\"", addr,
                      gai_strerror(rc));
            if (res != NULL) freeaddrinfo(res);
            return KILN_EINVAL;
        }
        /* Prefer IPv4 so "localhost" means 127.0.0.1 everywhere. */
        const struct addrinfo *pick = res;
        for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
            if (ai->ai_family == AF_INET) {
                pick = ai;
                break;
            }
        }
        if (pick->ai_addrlen > sizeof ss) {
            freeaddrinfo(res);
            return KILN_EINVAL;
        }
        memcpy(&ss, pick->ai_addr, pick->ai_addrlen);
        sslen = pick->ai_addrlen;
        freeaddrinfo(res);
    }
    if (ss.ss_family == AF_INET) v4->sin_port = htons((uint16_t)pnum);
    else v6->sin6_port = htons((uint16_t)pnum);
    *out = ss;
    *outlen = sslen;
    return KILN_OK;
}

static struct MHD_Daemon *metrics_daemon;

static enum MHD_Result metrics_reply(struct MHD_Connection *conn, unsigned code, const char *ctype,
                                     char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (r == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

/* Runs on libmicrohttpd's polling thread. */
static enum MHD_Result metrics_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls)
{
    (void)cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    static char text_plain[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static char msg[] = "method not allowed\n";
        return metrics_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text_plain, msg, sizeof msg - 1,
                             MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *body = NULL;
        size_t len = 0;
        if (kiln_metrics_render(&body, &len) != KILN_OK) return MHD_NO;
        return metrics_reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
                             len, MHD_RESPMEM_MUST_FREE);
    }
    if (strcmp(url, "/healthz") == 0) {
        static char ok[] = "ok\n";
        return metrics_reply(conn, MHD_HTTP_OK, text_plain, ok, sizeof ok - 1,
                             MHD_RESPMEM_PERSISTENT);
    }
    static char nf[] = "not found\n";
    return metrics_reply(conn, MHD_HTTP_NOT_FOUND, text_plain, nf, sizeof nf - 1,
                         MHD_RESPMEM_PERSISTENT);
}

uint16_t kiln_listen_addr_port(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
                                     : ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

kiln_status kiln_metrics_http_start(const char *addr)
{
    if (addr == NULL || addr[0] == '\0') return KILN_OK;
    if (metrics_daemon != NULL) return KILN_EINVAL;
    struct sockaddr_storage ss;
    size_t sslen = 0;
    kiln_status st = kiln_parse_listen_addr(addr, &ss, &sslen);
    if (st != KILN_OK) return st;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES) flags |= MHD_USE_EPOLL;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    metrics_daemon = MHD_start_daemon(flags, kiln_listen_addr_port(&ss), NULL, NULL, metrics_handler, NULL,
                                      MHD_OPTION_EXTERNAL_LOGGER, kiln_log_mhd, NULL,
                                      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                                      MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_END);
    if (metrics_daemon == NULL) {
        LOG_ERROR("metrics listener failed addr=%s", addr);
        return KILN_EIO;
    }
    LOG_INFO("metrics listening addr=%s", addr);
    return KILN_OK;
}

void kiln_metrics_http_stop(void)
{
    if (metrics_daemon == NULL) return;
    MHD_stop_daemon(metrics_daemon);
    metrics_daemon = NULL;
}
