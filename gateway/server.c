/* server.c - the libmicrohttpd daemon: request bodies (64 KiB cap), dispatch,
 * suspended requests answered from other threads, responses. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "clock.h"
#include "errors.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "routes.h"
#include "server.h"

#define SERVER_JSON_CTYPE "application/json; charset=utf-8"
#define SERVER_CONN_TIMEOUT_S 120 /* idle keep-alive connections */

static struct MHD_Daemon *server_daemon;
static atomic_long server_suspended;
static atomic_bool server_quiescing; /* answers carry Connection: close */

void gw_answer_reset(gw_answer *a)
{
    free(a->body);
    if (a->fd >= 0) close(a->fd);
    if (a->resp != NULL) MHD_destroy_response(a->resp);
    memset(a, 0, sizeof *a);
    a->fd = -1;
    a->ctype = SERVER_JSON_CTYPE;
}

void gw_answer_header(gw_answer *a, const char *name, const char *fmt, ...)
{
    for (int i = 0; i < a->nhdr; i++) {
        if (strcmp(a->hdr[i].name, name) != 0) continue;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(a->hdr[i].value, sizeof a->hdr[i].value, fmt, ap);
        va_end(ap);
        return;
    }
    if (a->nhdr == GW_ANSWER_MAX_HEADERS) return;
    a->hdr[a->nhdr].name = name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->hdr[a->nhdr].value, sizeof a->hdr[a->nhdr].value, fmt, ap);
    va_end(ap);
    a->nhdr++;
}

void gw_answer_raw(gw_answer *a, int status, const char *ctype, char *body, size_t len)
{
    free(a->body);
    a->status = status;
    a->ctype = ctype;
    a->body = body;
    a->len = body != NULL ? len : 0;
}

void gw_answer_json(gw_answer *a, int status, void *json)
{
    json_t *j = json;
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s == NULL) {
        /* Out of memory: an empty 503 says "try again" without more allocation. */
        gw_answer_raw(a, 503, SERVER_JSON_CTYPE, NULL, 0);
        return;
    }
    gw_answer_raw(a, status, SERVER_JSON_CTYPE, s, strlen(s));
}

void gw_server_suspend(gw_req *r)
{
    r->suspended = true;
    atomic_fetch_add(&server_suspended, 1);
    MHD_suspend_connection(r->conn);
}

void gw_server_resume(gw_req *r)
{
    r->answered = true;
    atomic_fetch_sub(&server_suspended, 1);
    MHD_resume_connection(r->conn);
}

long gw_server_suspended_count(void) { return atomic_load(&server_suspended); }

static enum MHD_Result server_queue(gw_req *r)
{
    gw_answer *a = &r->ans;
    struct MHD_Response *resp = NULL;
    if (a->status == 0) gw_answer_error(a, "unavailable", "the request was not answered", NULL);
    if (a->resp != NULL) {
        resp = a->resp;
        a->resp = NULL;
    } else if (a->fd >= 0) {
        resp = MHD_create_response_from_fd_at_offset64(a->fd_size, a->fd, a->fd_offset);
        if (resp != NULL) a->fd = -1; /* MHD closes it */
    } else {
        resp = MHD_create_response_from_buffer(a->len, a->body, MHD_RESPMEM_MUST_FREE);
        if (resp != NULL) a->body = NULL;
    }
    if (resp == NULL) return MHD_NO; /* closes the connection */
    enum MHD_Result ok = MHD_YES;
    if (a->ctype != NULL && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->ctype) != MHD_YES)
        ok = MHD_NO;
    if (ok == MHD_YES && atomic_load(&server_quiescing))
        ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    for (int i = 0; i < a->nhdr && ok == MHD_YES; i++)
        ok = MHD_add_response_header(resp, a->hdr[i].name, a->hdr[i].value);
    if (ok == MHD_YES) ok = MHD_queue_response(r->conn, (unsigned)a->status, resp);
    MHD_destroy_response(resp);

    int64_t us = kiln_mono_us() - r->start_us;
    gw_health_record(r->route, a->status, us);
    if (a->status >= 500)
        LOG_WARN("request method=%s path=%s status=%d user=%s ms=%.2f", r->method, r->url,
                 a->status, r->user[0] != '\0' ? r->user : "-", (double)us / 1000.0);
    else
        LOG_DEBUG("request method=%s path=%s status=%d user=%s ms=%.2f", r->method, r->url,
                  a->status, r->user[0] != '\0' ? r->user : "-", (double)us / 1000.0);
    return ok;
}

/* The declared Content-Length, or 0 when there is none. */
static unsigned long long server_declared_length(struct MHD_Connection *c)
{
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl == NULL) return 0;
    char *end = NULL;
    unsigned long long v = strtoull(cl, &end, 10);
    return end != cl ? v : 0;
}

static int server_append(gw_req *r, const char *data, size_t len)
{
    if (r->too_large || r->body_len + len > GW_BODY_MAX) {
        /* Keep reading (and dropping) so the 413 can be sent cleanly. */
        r->too_large = true;
        return 1;
    }
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap == 0 ? 1024 : r->body_cap;
        while (cap < r->body_len + len + 1) cap *= 2;
        char *nb = realloc(r->body, cap);
        if (nb == NULL) return 0;
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return 1;
}

static enum MHD_Result server_access(void *cls, struct MHD_Connection *conn, const char *url,
                                     const char *method, const char *version,
                                     const char *upload_data, size_t *upload_data_size,
                                     void **con_cls)
{
    (void)cls, (void)version;
    gw_req *r = *con_cls;
    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL) return MHD_NO;
        r->conn = conn;
        r->url = url;
        r->method = method;
        r->start_us = kiln_mono_us();
        r->user_idx = -1;
        r->ans.fd = -1;
        r->ans.ctype = SERVER_JSON_CTYPE;
        *con_cls = r;
        unsigned long long declared = server_declared_length(conn);
        if (declared > GW_BODY_DRAIN_MAX) {
            /* Not worth reading: answer now and close. A client that sent
             * no Expect: 100-continue may see a reset before the 413. */
            r->route = gw_routes_classify(url);
            gw_answer_error(&r->ans, "payload_too_large", "the request body is over 64 KiB", NULL);
            return server_queue(r);
        }
        /* A body somewhat over the cap is read and dropped, and the 413
         * follows it: answering first and closing on unread bytes makes the
         * kernel reset the connection, and the client may never read the
         * answer (the likely cause of a 70 KiB test POST, sent without
         * Expect, once getting no answer at all). */
        if (declared > GW_BODY_MAX) r->too_large = true;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!server_append(r, upload_data, *upload_data_size)) return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->suspended) {
        /* Resumed: the operation left its answer. */
        r->suspended = false;
        return server_queue(r);
    }
    if (r->answered) return MHD_YES; /* already queued; should not be called again */
    if (r->too_large) {
        r->route = gw_routes_classify(url);
        gw_answer_error(&r->ans, "payload_too_large", "the request body is over 64 KiB", NULL);
        return server_queue(r);
    }
    gw_routes_dispatch(r);
    if (r->suspended) return MHD_YES;
    r->answered = true;
    return server_queue(r);
}

static void server_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                             enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    gw_req *r = *con_cls;
    if (r == NULL) return;
    gw_answer_reset(&r->ans);
    free(r->body);
    free(r->pending_body);
    /* r->op is released by its owner before the request can complete. */
    free(r);
    *con_cls = NULL;
}

kiln_status gw_server_start(const gw_server_opts *o)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_TURBO | MHD_USE_ERROR_LOG;
    if (o->addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6; /* else MHD makes an IPv4 socket */
    server_daemon = MHD_start_daemon(
        flags, kiln_listen_addr_port(&o->addr), NULL, NULL, server_access, NULL, MHD_OPTION_EXTERNAL_LOGGER, kiln_log_mhd, NULL,
        MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&o->addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)o->threads,
        MHD_OPTION_NOTIFY_COMPLETED, server_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)SERVER_CONN_TIMEOUT_S, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
        /* Event streams hold their connection: allow many (each costs an fd). */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)GW_SERVER_MAX_CONNECTIONS,
        /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: MHD's default SO_REUSEADDR
         * already allows a restart without waiting out TIME_WAIT; the option
         * (SO_REUSEPORT) let a second process bind the same port and share
         * its connections silently. */
        MHD_OPTION_END);
    if (server_daemon == NULL) return KILN_ERR;
    return KILN_OK;
}

/* Stops taking new work: every answer from now on carries Connection: close,
 * and the router refuses new work with 503. MHD_quiesce_daemon() is not used:
 * with a thread pool and epoll, libmicrohttpd 0.9.75 can abort in it ("Failed
 * to remove listen FD from epoll set"), and the listener closes with
 * MHD_stop_daemon() a moment later anyway. */
void gw_server_quiesce(void)
{
    atomic_store(&server_quiescing, true);
}

void gw_server_drain(int64_t grace_ms)
{
    int64_t deadline = kiln_mono_ms() + grace_ms;
    while (gw_server_suspended_count() > 0 && kiln_mono_ms() < deadline) usleep(10 * 1000);
    long left = gw_server_suspended_count();
    if (left > 0) LOG_WARN("shutdown with requests still waiting count=%ld", left);
}

void gw_server_stop(void)
{
    if (server_daemon == NULL) return;
    MHD_stop_daemon(server_daemon);
    server_daemon = NULL;
}
