/* server.h - the HTTP server: one gw_req per request, answered at once or
 * later (after suspending the connection) from another thread. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "status.h"

#define GW_BODY_MAX (64 * 1024) /* CONTRACT §3: larger bodies are 413 */
#define GW_BODY_DRAIN_MAX (1024 * 1024) /* a 413 body up to this is read before the answer */
#define GW_ANSWER_MAX_HEADERS 4
#define GW_HEADER_VALUE_MAX 160
#define GW_USER_MAX 129
#define GW_SERVER_MAX_CONNECTIONS 16384 /* open HTTP connections (SSE clients included) */

/* Routes, also the metric label of a request. */
typedef enum {
    GW_ROUTE_NONE = 0,
    GW_ROUTE_HEALTHZ,
    GW_ROUTE_READYZ,
    GW_ROUTE_METRICS,
    GW_ROUTE_SUBMIT,
    GW_ROUTE_LIST,
    GW_ROUTE_GET,
    GW_ROUTE_CANCEL,
    GW_ROUTE_VIEWED,
    GW_ROUTE_IMAGE,
    GW_ROUTE_EVENTS,
    GW_ROUTE_COUNT
} gw_route;

/* What will be sent: a JSON (or text) body, or a file. */
typedef struct {
    int status;
    char *body;          /* malloc'ed, owned; NULL = empty */
    size_t len;
    const char *ctype;   /* static string */
    int fd;              /* >= 0: send fd_size bytes of this file from fd_offset (owned) */
    struct MHD_Response *resp; /* non-NULL: send this prepared response (owned; e.g. a stream) */
    uint64_t fd_size;
    uint64_t fd_offset;
    int nhdr;
    struct {
        const char *name; /* static string */
        char value[GW_HEADER_VALUE_MAX];
    } hdr[GW_ANSWER_MAX_HEADERS];
} gw_answer;

/* One HTTP request. Owned by the server; freed when MHD reports completion,
 * which never happens while the connection is suspended, so a pending
 * operation may keep a pointer to it until it calls gw_server_resume(). */
typedef struct gw_req {
    struct MHD_Connection *conn;
    const char *url;       /* valid for the request's lifetime (MHD's buffer) */
    const char *method;
    char *body;
    size_t body_len, body_cap;
    bool too_large;
    bool suspended;        /* set by the MHD thread only */
    bool answered;         /* ans is ready to be queued */
    int64_t start_us;      /* kiln_mono_us() at the first call */
    gw_route route;
    int user_idx;          /* index of the API key, -1 before auth */
    char user[GW_USER_MAX];
    gw_answer ans;

    /* Per-operation state, filled by the handlers. */
    char job_id[65];
    int image_index;
    int wait_s;
    int64_t wait_deadline_ms; /* mono */
    int64_t query_sent_us;    /* kiln_mono_us() when the last store query left */
    int64_t created_at_ms;
    int64_t ack_deadline_ms;  /* submit: mono; unacked then, it is answered 503 */
    char *pending_body;       /* submit: the 202 body, sent after the ack */
    size_t pending_len;
    int rpc_kind;             /* which store call is in flight */
    void *op;                 /* handler-owned extra state (freed by its owner) */
} gw_req;

typedef struct {
    struct sockaddr_storage addr;
    size_t addr_len;
    unsigned threads;
} gw_server_opts;

kiln_status gw_server_start(const gw_server_opts *o);
/* Shutdown in three steps: stop accepting; wait up to grace_ms for suspended
 * requests to be answered; stop the daemon (after NATS callbacks ended). */
void gw_server_quiesce(void);
void gw_server_drain(int64_t grace_ms);
void gw_server_stop(void);

/* Suspends r's connection (MHD thread, inside the handler), before starting
 * an operation whose completion calls gw_server_resume(). */
void gw_server_suspend(gw_req *r);
/* Marks r answered and resumes it; any thread, once per suspension. */
void gw_server_resume(gw_req *r);
/* Number of suspended requests not yet resumed. */
long gw_server_suspended_count(void);

/* Answer helpers (any thread that owns r at that moment). */
void gw_answer_reset(gw_answer *a);
void gw_answer_header(gw_answer *a, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Takes a JSON value (stolen: decref'ed here) and makes it the body. */
void gw_answer_json(gw_answer *a, int status, void *json);
/* Takes a malloc'ed body. */
void gw_answer_raw(gw_answer *a, int status, const char *ctype, char *body, size_t len);

#endif
