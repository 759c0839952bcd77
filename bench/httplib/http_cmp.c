/* http_cmp.c - kiln-bench-http: one tiny HTTP server per library, so the
 * gateway's HTTP library can be chosen by measurement (bench/httplib/run.sh
 * drives it with wrk and bench/post.lua).
 *
 *   kiln-bench-http MODE PORT [THREADS=2]
 *
 * Listens on 127.0.0.1:PORT until SIGTERM or SIGINT, then exits 0. Every mode
 * reads the whole request body and answers every request 202 with the same
 * ~120-byte JSON body and Content-Type as the gateway's POST /v1/jobs.
 *
 *   mhd         libmicrohttpd with the gateway's daemon flags, THREADS pool
 *               threads, answered inline in the access handler
 *   mhd-hop     as mhd, but each request is suspended and resumed by one
 *               separate completer thread (as the gateway's JetStream ack
 *               arrives on a libnats thread), then answered
 *   evhttp      libevent 2.1 evhttp: THREADS threads, each with its own
 *               event_base and evhttp on a SO_REUSEPORT listener; inline.
 *               The bases use EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST: an add
 *               and a delete of the same fd in one loop iteration cost no
 *               epoll_ctl (fair to libevent; evhttp dup()s no fds)
 *   evhttp-hop  as evhttp, but the completer thread hands each request back
 *               to the base that owns it, in batches, which then replies
 *   h2o         libh2o-evloop (only when built with KILN_HAVE_H2O): THREADS
 *               threads, each with its own evloop and SO_REUSEPORT listener
 *   h2o-hop     as h2o, but the completer thread hands each request back to
 *               the loop that owns it through h2o's own multithread queue
 *               (h2o_multithread_send_message; one pipe write per batch),
 *               and that loop replies (only KILN_HAVE_H2O)
 *
 * KILN_BENCH_HOP_DELAY_MS=N (tests only, not for measuring): the completer
 * sleeps N ms before completing each batch it takes, so requests are held
 * long enough for their clients to go away. Without it the completer runs a
 * copy of its loop that has no trace of the delay.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <microhttpd.h>

#ifdef KILN_HAVE_H2O
#define H2O_USE_EPOLL 1 /* Debian's libh2o-evloop; without it h2o.h wants libuv */
#include <h2o.h>
#endif

#define REPLY_CTYPE "application/json; charset=utf-8"
#define REPLY_ID "0192f1a8-7c3e-7d2a-9b4f-3a1e5c6d7f80"
static const char reply_body[] =
    "{\"id\":\"" REPLY_ID "\",\"status\":\"pending\",\"status_url\":\"/v1/jobs/" REPLY_ID "\"}";
#define REPLY_LEN (sizeof reply_body - 1)

#define BODY_KEEP 512 /* bytes of each request body kept (all of it is read) */
#define MAX_THREADS 64

#define CONTAINER_OF(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

static const char *prog = "kiln-bench-http";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* die_err(ERR, WHAT): for calls that return an errno value (pthread_*). */
static void die_err(int err, const char *what)
{
    die("%s failed: %s", what, strerror(err));
}

static void lock(pthread_mutex_t *m)
{
    int e = pthread_mutex_lock(m);
    if (e != 0) die_err(e, "pthread_mutex_lock");
}

static void unlock(pthread_mutex_t *m)
{
    int e = pthread_mutex_unlock(m);
    if (e != 0) die_err(e, "pthread_mutex_unlock");
}

/* Keeps up to BODY_KEEP bytes of a body in DST (HAVE bytes already there) and
 * returns the new total length: the body is read, as a real handler's is. */
static size_t body_take(char *dst, size_t have, const char *src, size_t n)
{
    if (n > 0 && have < BODY_KEEP) memcpy(dst + have, src, n < BODY_KEEP - have ? n : BODY_KEEP - have);
    return have + n;
}

/* --- the completer: one thread that finishes handed-over requests ----------
 * Stands in for the libnats thread that delivers the JetStream publish ack.
 * A FIFO list under a mutex; the thread takes everything pending at once. */
typedef struct hop_item hop_item;
struct hop_item {
    hop_item *next;
    void (*complete)(hop_item *); /* runs on the completer thread; may free the item */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    hop_item *head;
    hop_item **tail;
    bool stop;
    pthread_t tid;
} completer = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, &completer.head, false, 0};

static void completer_push(hop_item *it)
{
    it->next = NULL;
    lock(&completer.mu);
    bool was_empty = completer.head == NULL;
    *completer.tail = it;
    completer.tail = &it->next;
    /* The thread only sleeps on an empty list. */
    if (was_empty) {
        int e = pthread_cond_signal(&completer.cv);
        if (e != 0) die_err(e, "pthread_cond_signal");
    }
    unlock(&completer.mu);
}

static long completer_delay_ms; /* KILN_BENCH_HOP_DELAY_MS, tests only */

/* The completer's loop; DELAY is a constant in each caller, so the measured
 * copy (completer_main) has no trace of the test delay. */
static inline __attribute__((always_inline)) void completer_loop(bool delay)
{
    for (;;) {
        lock(&completer.mu);
        while (completer.head == NULL && !completer.stop) {
            int e = pthread_cond_wait(&completer.cv, &completer.mu);
            if (e != 0) die_err(e, "pthread_cond_wait");
        }
        hop_item *batch = completer.head;
        completer.head = NULL;
        completer.tail = &completer.head;
        bool stop = completer.stop;
        unlock(&completer.mu);
        if (batch == NULL && stop) return; /* stopped, and nothing left */
        if (delay) {
            const struct timespec d = {completer_delay_ms / 1000, completer_delay_ms % 1000 * 1000000L};
            nanosleep(&d, NULL);
        }
        while (batch != NULL) {
            hop_item *next = batch->next; /* complete() may free the item */
            batch->complete(batch);
            batch = next;
        }
    }
}

static void *completer_main(void *arg)
{
    (void)arg;
    completer_loop(false);
    return NULL;
}

static void *completer_main_delayed(void *arg)
{
    (void)arg;
    completer_loop(true);
    return NULL;
}

static void completer_start(void)
{
    const char *d = getenv("KILN_BENCH_HOP_DELAY_MS");
    if (d != NULL && *d != '\0') {
        char *end = NULL;
        errno = 0;
        completer_delay_ms = strtol(d, &end, 10);
        if (errno != 0 || *end != '\0' || completer_delay_ms < 0 || completer_delay_ms > 60000)
            die("bad KILN_BENCH_HOP_DELAY_MS '%s' (want 0..60000)", d);
        fprintf(stderr, "%s: test mode: the completer waits %ld ms before each batch\n", prog, completer_delay_ms);
    }
    int e = pthread_create(&completer.tid, NULL, completer_delay_ms > 0 ? completer_main_delayed : completer_main,
                           NULL);
    if (e != 0) die_err(e, "pthread_create (completer)");
}

/* Completes what is still pending, then ends the thread. */
static void completer_stop(void)
{
    lock(&completer.mu);
    completer.stop = true;
    int e = pthread_cond_signal(&completer.cv);
    if (e != 0) die_err(e, "pthread_cond_signal");
    unlock(&completer.mu);
    e = pthread_join(completer.tid, NULL);
    if (e != 0) die_err(e, "pthread_join (completer)");
}

/* A loopback listener with SO_REUSEPORT, for the modes with one per thread. */
static int listen_reuseport(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        die("setsockopt SO_REUSEADDR: %s", strerror(errno));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        die("setsockopt SO_REUSEPORT: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (const struct sockaddr *)&sa, sizeof sa) != 0)
        die("bind 127.0.0.1:%d: %s", port, strerror(errno));
    if (listen(fd, 1024) != 0) die("listen 127.0.0.1:%d: %s", port, strerror(errno));
    return fd;
}

/* --- libmicrohttpd ---------------------------------------------------------- */
typedef struct {
    hop_item hop;
    struct MHD_Connection *conn;
    bool suspended; /* handed to the completer; the next call answers */
    bool answered;
    size_t body_len;
    char body[BODY_KEEP];
} mh_req;

static struct MHD_Daemon *mh_daemon;
static bool mh_hop;
static atomic_bool mh_stopping;  /* no new suspensions: answer inline */
static atomic_long mh_suspended; /* suspended and not yet resumed */

static enum MHD_Result mh_reply(struct MHD_Connection *conn)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(REPLY_LEN, (void *)reply_body, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        fprintf(stderr, "%s: MHD_create_response_from_buffer failed\n", prog);
        return MHD_NO;
    }
    enum MHD_Result ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, REPLY_CTYPE);
    if (ok != MHD_YES)
        fprintf(stderr, "%s: MHD_add_response_header failed\n", prog);
    else if ((ok = MHD_queue_response(conn, MHD_HTTP_ACCEPTED, resp)) != MHD_YES)
        fprintf(stderr, "%s: MHD_queue_response failed\n", prog);
    MHD_destroy_response(resp);
    return ok;
}

/* On the completer thread. The request may be answered and freed by an MHD
 * thread as soon as it is resumed: nothing of it is touched after. */
static void mh_resume(hop_item *it)
{
    mh_req *r = CONTAINER_OF(it, mh_req, hop);
    MHD_resume_connection(r->conn);
    atomic_fetch_sub(&mh_suspended, 1);
}

static enum MHD_Result mh_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)cls, (void)url, (void)method, (void)version;
    mh_req *r = *con_cls;
    if (r == NULL) { /* headers read */
        r = malloc(sizeof *r);
        if (r == NULL) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return MHD_NO;
        }
        r->conn = conn;
        r->suspended = r->answered = false;
        r->body_len = 0;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        r->body_len = body_take(r->body, r->body_len, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->suspended) { /* resumed by the completer */
        r->suspended = false;
        r->answered = true;
        return mh_reply(conn);
    }
    if (mh_hop) {
        /* Counted before the check, so the shutdown (flag, then wait for the
         * count to reach 0) never stops the daemon with one suspended. */
        atomic_fetch_add(&mh_suspended, 1);
        if (!atomic_load(&mh_stopping)) {
            r->suspended = true;
            MHD_suspend_connection(conn);
            r->hop.complete = mh_resume;
            completer_push(&r->hop);
            return MHD_YES;
        }
        atomic_fetch_sub(&mh_suspended, 1);
    }
    r->answered = true;
    return mh_reply(conn);
}

static void mh_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    free(*con_cls);
    *con_cls = NULL;
}

static void mh_start(bool hop, int port, int threads)
{
    mh_hop = hop;
    if (hop) completer_start();
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The gateway's flags and options (gateway/server.c, gw_server_start). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_TURBO | MHD_USE_ERROR_LOG;
    mh_daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, mh_access, NULL,
                                 MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&sa,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads,
                                 MHD_OPTION_NOTIFY_COMPLETED, mh_completed, NULL,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)16384, MHD_OPTION_END);
    if (mh_daemon == NULL) die("MHD_start_daemon on 127.0.0.1:%d failed", port);
}

static void mh_stop(void)
{
    if (mh_hop) {
        /* MHD_stop_daemon() aborts while a connection is suspended. */
        atomic_store(&mh_stopping, true);
        const struct timespec ms = {0, 1000 * 1000};
        while (atomic_load(&mh_suspended) > 0) nanosleep(&ms, NULL);
    }
    MHD_stop_daemon(mh_daemon);
    if (mh_hop) completer_stop();
}

/* --- libevent evhttp ------------------------------------------------------- */
typedef struct {
    struct event_base *base;
    struct evhttp *http;
    struct event *wake; /* made active by the completer: replies are pending */
    pthread_t tid;
    pthread_mutex_t mu; /* guards the pending replies */
    hop_item *head;
    hop_item **tail;
} lev_worker;

typedef struct {
    hop_item hop;
    struct evhttp_request *req;
    lev_worker *owner;
    size_t body_len;
    char body[BODY_KEEP];
} lev_req;

static lev_worker lev_workers[MAX_THREADS];
static int lev_nworkers;
static bool lev_hop;

/* On the thread of the base that owns REQ. */
static void lev_reply(struct evhttp_request *req)
{
    if (evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", REPLY_CTYPE) != 0 ||
        evbuffer_add(evhttp_request_get_output_buffer(req), reply_body, REPLY_LEN) != 0) {
        fprintf(stderr, "%s: evhttp: cannot build the answer\n", prog);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_send_reply(req, 202, "Accepted", NULL);
}

static size_t lev_take_body(struct evhttp_request *req, char *dst)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    if (evbuffer_copyout(in, dst, n < BODY_KEEP ? n : BODY_KEEP) < 0)
        fprintf(stderr, "%s: evbuffer_copyout failed\n", prog);
    return n;
}

/* On the completer thread: back to the owning base, which alone may reply.
 * Its wake-up event is made active only when its list was empty. */
static void lev_handback(hop_item *it)
{
    lev_worker *w = CONTAINER_OF(it, lev_req, hop)->owner;
    it->next = NULL;
    lock(&w->mu);
    bool was_empty = w->head == NULL;
    *w->tail = it;
    w->tail = &it->next;
    unlock(&w->mu);
    if (was_empty) event_active(w->wake, EV_READ, 0);
}

/* On the base's thread: replies to everything handed back so far. */
static void lev_on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    lev_worker *w = arg;
    lock(&w->mu);
    hop_item *batch = w->head;
    w->head = NULL;
    w->tail = &w->head;
    unlock(&w->mu);
    while (batch != NULL) {
        hop_item *next = batch->next;
        lev_req *r = CONTAINER_OF(batch, lev_req, hop);
        lev_reply(r->req);
        free(r);
        batch = next;
    }
}

static void lev_on_request(struct evhttp_request *req, void *arg)
{
    lev_worker *w = arg;
    if (!lev_hop) {
        char body[BODY_KEEP];
        (void)lev_take_body(req, body);
        lev_reply(req);
        return;
    }
    lev_req *r = malloc(sizeof *r);
    if (r == NULL) {
        fprintf(stderr, "%s: out of memory\n", prog);
        evhttp_send_error(req, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    r->body_len = lev_take_body(req, r->body);
    r->req = req;
    r->owner = w;
    r->hop.complete = lev_handback;
    completer_push(&r->hop);
}

static void *lev_main(void *arg)
{
    lev_worker *w = arg;
    if (event_base_dispatch(w->base) < 0) die("event_base_dispatch failed");
    return NULL;
}

static void lev_start(bool hop, int port, int threads)
{
    lev_hop = hop;
    /* Locks in every base: the completer activates events and main breaks
     * the loops from other threads. */
    if (evthread_use_pthreads() != 0) die("evthread_use_pthreads failed");
    if (hop) completer_start();
    lev_nworkers = threads;
    for (int i = 0; i < threads; i++) {
        lev_worker *w = &lev_workers[i];
        int e = pthread_mutex_init(&w->mu, NULL);
        if (e != 0) die_err(e, "pthread_mutex_init");
        w->head = NULL;
        w->tail = &w->head;
        /* The changelist: an fd's add and delete in one loop iteration
         * (evhttp's read/write switches) cost no epoll_ctl. */
        struct event_config *cfg = event_config_new();
        if (cfg == NULL) die("event_config_new failed");
        if (event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) != 0)
            die("event_config_set_flag failed");
        w->base = event_base_new_with_config(cfg);
        event_config_free(cfg);
        if (w->base == NULL) die("event_base_new_with_config failed");
        /* "epoll (with changelist)" when it took */
        if (strstr(event_base_get_method(w->base), "changelist") == NULL)
            fprintf(stderr, "%s: evhttp: backend %s: no changelist\n", prog, event_base_get_method(w->base));
        if ((w->http = evhttp_new(w->base)) == NULL) die("evhttp_new failed");
        evhttp_set_gencb(w->http, lev_on_request, w);
        if ((w->wake = event_new(w->base, -1, 0, lev_on_wake, w)) == NULL) die("event_new failed");
        int fd = listen_reuseport(port);
        if (evhttp_accept_socket_with_handle(w->http, fd) == NULL)
            die("evhttp_accept_socket_with_handle failed");
    }
    for (int i = 0; i < threads; i++) {
        int e = pthread_create(&lev_workers[i].tid, NULL, lev_main, &lev_workers[i]);
        if (e != 0) die_err(e, "pthread_create (evhttp)");
    }
}

static void lev_stop(void)
{
    for (int i = 0; i < lev_nworkers; i++)
        if (event_base_loopbreak(lev_workers[i].base) != 0) die("event_base_loopbreak failed");
    for (int i = 0; i < lev_nworkers; i++) {
        int e = pthread_join(lev_workers[i].tid, NULL);
        if (e != 0) die_err(e, "pthread_join (evhttp)");
    }
    if (lev_hop) completer_stop(); /* hands back what it still had */
    for (int i = 0; i < lev_nworkers; i++) {
        lev_worker *w = &lev_workers[i];
        /* Unanswered requests: evhttp_free() frees them with their
         * connections; only our records of them are freed here. */
        for (hop_item *it = w->head, *next; it != NULL; it = next) {
            next = it->next;
            free(CONTAINER_OF(it, lev_req, hop));
        }
        evhttp_free(w->http); /* closes the listener and the connections */
        event_free(w->wake);
        event_base_free(w->base);
        int e = pthread_mutex_destroy(&w->mu);
        if (e != 0) die_err(e, "pthread_mutex_destroy");
    }
    libevent_global_shutdown();
}

/* --- h2o (libh2o-evloop) ----------------------------------------------------- */
#ifdef KILN_HAVE_H2O
typedef struct {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept;
    int listen_fd;
    h2o_socket_t *listener;
    /* Both receivers are on ctx.queue, the loop's own multithread queue
     * (h2o_context_init makes it with h2o_multithread_create_queue). */
    h2o_multithread_receiver_t stop_rx; /* main's stop message wakes the loop */
    h2o_multithread_message_t stop_msg;
    h2o_multithread_receiver_t hop_rx; /* h2o-hop: requests back from the completer */
    bool stop;
    pthread_t tid;
} ho_worker;

/* h2o-hop: a request with the completer. malloc'ed, not in the request's
 * pool: h2o clears that pool when the client goes away (an HTTP/2 stream is
 * reset or its connection closes) even while the completer holds the item.
 * MARKER, a ref-counted chunk in the pool, points back here; its dispose
 * callback sets ORPHANED. Dispose, the reply and the free all run on the
 * owning loop's thread (the completer touches only HOP and MSG and reads
 * OWNER), so ORPHANED needs no lock. Each item is freed once: by
 * ho_on_handback on that thread, or, if still in flight at shutdown, by
 * ho_stop once every other thread has ended. */
typedef struct ho_hop ho_hop;
struct ho_hop {
    hop_item hop;                  /* on the completer's list */
    h2o_multithread_message_t msg; /* then on the owner's hop_rx */
    ho_worker *owner;
    h2o_req_t *req;  /* only while !orphaned */
    ho_hop **marker; /* in req->pool, points here; NULLed once answered */
    bool orphaned;   /* the pool is gone: nothing is sent */
    size_t body_len;
    char body[BODY_KEEP];
};

static h2o_globalconf_t ho_config;
static ho_worker ho_workers[MAX_THREADS];
static int ho_nworkers;
static bool ho_hop_mode;

/* On the thread of the loop that owns REQ. */
static void ho_reply(h2o_req_t *req)
{
    req->res.status = 202;
    req->res.reason = "Accepted";
    req->res.content_length = REPLY_LEN; /* else HTTP/1.1 answers close the connection */
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT(REPLY_CTYPE));
    h2o_send_inline(req, reply_body, REPLY_LEN);
}

/* The dispose callback of a hop's marker: the request's pool is cleared. */
static void ho_marker_dispose(void *p)
{
    ho_hop *h = *(ho_hop **)p;
    if (h != NULL) h->orphaned = true;
}

/* On the completer thread: back to the owning loop, which alone may reply.
 * h2o wakes that loop (a write to the queue's pipe, in 2.2) only when hop_rx
 * had nothing pending; the loop may free the item as soon as it is sent. */
static void ho_handback(hop_item *it)
{
    ho_hop *h = CONTAINER_OF(it, ho_hop, hop);
    h2o_multithread_send_message(&h->owner->hop_rx, &h->msg);
}

/* On the loop's thread: replies to everything handed back so far. */
static void ho_on_handback(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    (void)rx;
    while (!h2o_linklist_is_empty(messages)) {
        ho_hop *h = CONTAINER_OF(messages->next, ho_hop, msg.link);
        h2o_linklist_unlink(&h->msg.link);
        if (!h->orphaned) {
            *h->marker = NULL; /* the pool outlives the item now */
            ho_reply(h->req);
        }
        free(h);
    }
}

static int ho_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    if (!ho_hop_mode) {
        char body[BODY_KEEP];
        (void)body_take(body, 0, req->entity.base, req->entity.len);
        ho_reply(req);
        return 0;
    }
    ho_hop *h = malloc(sizeof *h);
    if (h == NULL) {
        fprintf(stderr, "%s: out of memory\n", prog);
        h2o_send_error_503(req, "Service Unavailable", "out of memory", 0);
        return 0;
    }
    h->body_len = body_take(h->body, 0, req->entity.base, req->entity.len);
    h->msg.link = (h2o_linklist_t){NULL, NULL}; /* unlinked, as send_message wants */
    h->owner = CONTAINER_OF(req->conn->ctx, ho_worker, ctx);
    h->req = req;
    h->orphaned = false;
    h->marker = h2o_mem_alloc_shared(&req->pool, sizeof *h->marker, ho_marker_dispose); /* aborts on ENOMEM */
    *h->marker = h;
    h->hop.complete = ho_handback;
    completer_push(&h->hop);
    return 0;
}

static void ho_on_accept(h2o_socket_t *listener, const char *err)
{
    ho_worker *w = listener->data;
    if (err != NULL) {
        fprintf(stderr, "%s: h2o accept: %s\n", prog, err);
        return;
    }
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (sock != NULL) h2o_accept(&w->accept, sock);
}

static void ho_on_stop(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    ho_worker *w = CONTAINER_OF(rx, ho_worker, stop_rx);
    while (!h2o_linklist_is_empty(messages)) h2o_linklist_unlink(messages->next);
    w->stop = true;
}

static pthread_barrier_t ho_ready; /* the loop threads and main: all set up */

/* Sets up the loop and context on their own thread: sockets take their
 * buffers from the creating thread's h2o_socket_buffer_prototype (a
 * thread-local, unlocked free list), and ctx.queue's wake-up socket is read
 * on the loop thread; made on main, every loop would share main's list. */
static void *ho_main(void *arg)
{
    ho_worker *w = arg;
    h2o_evloop_t *loop = h2o_evloop_create();
    if (loop == NULL) die("h2o_evloop_create failed");
    h2o_context_init(&w->ctx, loop, &ho_config);
    w->accept.ctx = &w->ctx;
    w->accept.hosts = ho_config.hosts;
    h2o_multithread_register_receiver(w->ctx.queue, &w->stop_rx, ho_on_stop);
    h2o_multithread_register_receiver(w->ctx.queue, &w->hop_rx, ho_on_handback);
    w->listener = h2o_evloop_socket_create(loop, w->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    if (w->listener == NULL) die("h2o_evloop_socket_create failed");
    w->listener->data = w;
    h2o_socket_read_start(w->listener, ho_on_accept);
    int e = pthread_barrier_wait(&ho_ready);
    if (e != 0 && e != PTHREAD_BARRIER_SERIAL_THREAD) die_err(e, "pthread_barrier_wait");
    while (!w->stop)
        if (h2o_evloop_run(w->ctx.loop, INT32_MAX) != 0) die("h2o_evloop_run failed");
    return NULL;
}

#ifdef __SANITIZE_ADDRESS__
/* LeakSanitizer's built-in suppressions (its hook, so not static): h2o 2.2
 * keeps per-thread free lists of buffers and pool chunks (thread-local
 * h2o_mem_recycle_t) that no API frees, so each ended loop thread leaves a
 * few KiB that LSan reports at exit. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:h2o_mem_alloc_recycle\n";
}
#endif

static void ho_start(bool hop, int port, int threads)
{
    ho_hop_mode = hop;
    if (hop) completer_start();
    h2o_config_init(&ho_config);
    ho_config.server_name = h2o_iovec_init(H2O_STRLIT("")); /* no Server header, as the others */
    h2o_hostconf_t *host = h2o_config_register_host(&ho_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
    if (host == NULL || path == NULL || handler == NULL) die("h2o configuration failed");
    handler->on_req = ho_on_req;
    ho_nworkers = threads;
    for (int i = 0; i < threads; i++) ho_workers[i].listen_fd = listen_reuseport(port);
    int e = pthread_barrier_init(&ho_ready, NULL, (unsigned)threads + 1);
    if (e != 0) die_err(e, "pthread_barrier_init");
    for (int i = 0; i < threads; i++) {
        e = pthread_create(&ho_workers[i].tid, NULL, ho_main, &ho_workers[i]);
        if (e != 0) die_err(e, "pthread_create (h2o)");
    }
    /* ho_stop needs every stop_rx registered. */
    e = pthread_barrier_wait(&ho_ready);
    if (e != 0 && e != PTHREAD_BARRIER_SERIAL_THREAD) die_err(e, "pthread_barrier_wait");
}

/* Stops the loops and leaves the rest to the exit: h2o 2.2 cannot dispose of
 * a context while connections are open (h2o_timeout_dispose asserts), and
 * idle keep-alive connections only close on their 10 s timeout. */
static void ho_stop(void)
{
    for (int i = 0; i < ho_nworkers; i++)
        h2o_multithread_send_message(&ho_workers[i].stop_rx, &ho_workers[i].stop_msg);
    for (int i = 0; i < ho_nworkers; i++) {
        int e = pthread_join(ho_workers[i].tid, NULL);
        if (e != 0) die_err(e, "pthread_join (h2o)");
    }
    int e = pthread_barrier_destroy(&ho_ready);
    if (e != 0) die_err(e, "pthread_barrier_destroy");
    if (!ho_hop_mode) return;
    completer_stop(); /* hands back what it still had */
    /* What was handed back after its loop stopped is still on hop_rx: every
     * other thread has ended, so its list is read without the queue's lock.
     * Those requests stay unanswered with their connections (left to the
     * exit, as above); their markers are cleared, so a later dispose of
     * their pools would touch no freed item. */
    for (int i = 0; i < ho_nworkers; i++) {
        h2o_linklist_t *pending = &ho_workers[i].hop_rx._messages;
        while (!h2o_linklist_is_empty(pending)) {
            ho_hop *h = CONTAINER_OF(pending->next, ho_hop, msg.link);
            h2o_linklist_unlink(&h->msg.link);
            if (!h->orphaned) *h->marker = NULL;
            free(h);
        }
    }
}
#endif

/* --- main -------------------------------------------------------------------- */
static const char *const modes[] = {"mhd", "mhd-hop", "evhttp", "evhttp-hop",
#ifdef KILN_HAVE_H2O
                                    "h2o", "h2o-hop",
#endif
                                    NULL};

static void usage(void)
{
    fprintf(stderr, "usage: %s MODE PORT [THREADS=2]\n  modes:", prog);
    for (int i = 0; modes[i] != NULL; i++) fprintf(stderr, " %s", modes[i]);
    fputc('\n', stderr);
    exit(2);
}

static long parse_num(const char *s, const char *what, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        die("bad %s '%s' (want %ld..%ld)", what, s, lo, hi);
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    const char *mode = argv[1];
    bool known = false;
    for (int i = 0; modes[i] != NULL; i++) known = known || strcmp(mode, modes[i]) == 0;
    if (!known) {
        fprintf(stderr, "%s: unknown mode '%s'\n", prog, mode);
        usage();
    }
    if (argc < 3 || argc > 4) usage();
    int port = (int)parse_num(argv[2], "port", 1, 65535);
    int threads = argc > 3 ? (int)parse_num(argv[3], "thread count", 1, MAX_THREADS) : 2;

    /* SIGTERM/SIGINT are taken by sigwait() below: blocked before any thread
     * starts, so every thread inherits the mask. */
    struct sigaction ign = {.sa_handler = SIG_IGN};
    if (sigaction(SIGPIPE, &ign, NULL) != 0) die("sigaction SIGPIPE: %s", strerror(errno));
    sigset_t stop_sigs;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGTERM);
    sigaddset(&stop_sigs, SIGINT);
    int e = pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL);
    if (e != 0) die_err(e, "pthread_sigmask");

    if (strcmp(mode, "mhd") == 0 || strcmp(mode, "mhd-hop") == 0)
        mh_start(strcmp(mode, "mhd-hop") == 0, port, threads);
    else if (strcmp(mode, "evhttp") == 0 || strcmp(mode, "evhttp-hop") == 0)
        lev_start(strcmp(mode, "evhttp-hop") == 0, port, threads);
#ifdef KILN_HAVE_H2O
    else
        ho_start(strcmp(mode, "h2o-hop") == 0, port, threads);
#endif
    fprintf(stderr, "%s: mode=%s listening on 127.0.0.1:%d threads=%d\n", prog, mode, port, threads);

    int sig = 0;
    e = sigwait(&stop_sigs, &sig);
    if (e != 0) die_err(e, "sigwait");

    if (strncmp(mode, "mhd", 3) == 0)
        mh_stop();
    else if (strncmp(mode, "evhttp", 6) == 0)
        lev_stop();
#ifdef KILN_HAVE_H2O
    else
        ho_stop();
#endif
    fprintf(stderr, "%s: stopped on signal %d\n", prog, sig);
    return 0;
}
