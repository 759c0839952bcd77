/* natsconn.h - the NATS connection every binary uses: reconnects forever,
 * sends as soon as possible (low latency), logs disconnects/reconnects. */
#ifndef KILN_NATSCONN_H
#define KILN_NATSCONN_H

#include <nats/nats.h>
#include <stdbool.h>

#include "status.h"

/* Checks a server list (KILN_NATS_URL): 1 to 32 servers separated by commas
 * or spaces, each [nats:// or tls://][user[:password]@]host[:port]. On
 * failure writes why to err, naming the server by its position (never its
 * text: it may hold a password), and returns KILN_EINVAL. */
kiln_status kiln_nats_urls_check(const char *urls, char *err, size_t errlen);

/* Copies urls to out with every user[:password]@ replaced by "***@", for logs. */
void kiln_nats_urls_redact(const char *urls, char *out, size_t outlen);

/* Connects to the comma-separated server list `urls`, retrying the initial
 * connect too until `initial_timeout_ms` passes (0 = one try). The connection
 * then reconnects forever. On success *nc and *js (may be NULL if not wanted)
 * are set; the caller destroys them with kiln_nats_close(). */
kiln_status kiln_nats_connect(const char *urls, const char *name, int64_t initial_timeout_ms,
                              natsConnection **nc, jsCtx **js);

/* Same, with JetStream async-publish options (max pending and an ack handler). */
kiln_status kiln_nats_connect_async(const char *urls, const char *name, int64_t initial_timeout_ms,
                                    int64_t max_pending, jsPubAckHandler ack_handler,
                                    void *ack_closure, natsConnection **nc, jsCtx **js);

/* Options of kiln_nats_connect_opts; kiln_nats_opts_init sets the defaults
 * that kiln_nats_connect_async uses (send_asap true, the rest 0/NULL). */
typedef struct {
    const char *name;           /* connection name shown by the server */
    int64_t initial_timeout_ms; /* initial connect retries (0 = one try) */
    bool send_asap;             /* write every publish at once (low latency); false lets
                                 * libnats' flusher thread batch writes (fewer syscalls) */
    bool global_delivery;       /* async subscriptions share libnats' delivery thread pool
                                 * instead of one thread each (many subscriptions) */
    int64_t max_pending;        /* JetStream async publishes awaiting acks; 0 = default */
    jsPubAckHandler ack_handler;
    void *ack_closure;
    int64_t js_wait_ms;         /* JetStream API call timeout; 0 = library default (5 s) */
} kiln_nats_opts;

void kiln_nats_opts_init(kiln_nats_opts *o);

/* kiln_nats_connect_async with every option explicit. */
kiln_status kiln_nats_connect_opts(const char *urls, const kiln_nats_opts *o, natsConnection **nc,
                                   jsCtx **js);

/* For a daemon that blocks SIGTERM/SIGINT and takes them with sigwait()
 * once running: from now on, a connect that is still retrying takes such a
 * signal itself and gives up with KILN_ESTOPPED, so a stop does not wait out
 * the connect timeout. Off by default: the client library must never take a
 * signal meant for the program that links it. */
void kiln_nats_stop_on_signals(void);
/* True for a status another try may fix: a timeout, or a server that did
 * not answer (restarting, unreachable, JetStream not ready). */
bool kiln_nats_transient(kiln_status st);

/* Waits ms (between tries at start-up). After kiln_nats_stop_on_signals(), a
 * SIGTERM/SIGINT ends the wait: true then (the signal is taken). */
bool kiln_nats_wait_or_stop(int64_t ms);

/* Destroys js then drains/closes and destroys nc. Accepts NULLs. When it
 * returns, js's publish-ack handler runs no more (common/ackgate.c): what it
 * uses may be freed. */
void kiln_nats_close(natsConnection *nc, jsCtx *js);

/* Takes back every async publish of js that nats.c still waits an ack for,
 * and frees it (an ack that comes later is dropped); returns how many. Call
 * only after js's first async publish (nats.c 3.4.1 crashes before), and
 * only while no async publish on js is under way: nats.c lists a publish as
 * pending before it writes it out. */
int kiln_nats_drop_unacked(jsCtx *js);
/* Unsubscribes and destroys *sub (NULL-safe) and sets it to NULL. For an
 * async subscription it returns once its message handler runs no more (up
 * to 5 s): what the handler uses may be freed. Never call it from that
 * handler. */
void kiln_nats_unsubscribe(natsSubscription **sub);

/* Maps a natsStatus to a kiln_status (NATS_TIMEOUT -> KILN_ETIMEOUT,
 * no responders/not connected -> KILN_EUNAVAILABLE, else KILN_ENATS). */
kiln_status kiln_nats_status(natsStatus s);

/* When (kiln_mono_ms) a connection of this process last reconnected to
 * NATS; INT64_MIN / 2 before any reconnect. */
int64_t kiln_nats_reconnected_at(void);

/* Whether message seq is still in stream (a STREAM.MSG.GET, waiting up to
 * wait_ms): KILN_OK when it is; KILN_ENOTFOUND when JetStream says there is
 * no such message (only that: a stream still recovering is no loss);
 * KILN_ENATS when it did not say, with *ns and *jerr telling why. */
kiln_status kiln_js_msg_present(jsCtx *js, const char *stream, uint64_t seq, int64_t wait_ms,
                                natsStatus *ns, jsErrCode *jerr);

#endif
