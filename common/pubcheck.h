/* pubcheck.h - publishes JetStream confirmed shortly before a reconnect to
 * NATS, kept and checked after it: nats-server 2.9.10 can lose messages it
 * had confirmed when it is killed (README, Known limitations). The owner
 * says what a kept publish is, how to tell whether it survived and what to
 * do when it did not (the store's jobs.done and events, the gateway's
 * submits).
 *
 * Threads: kiln_pubcheck_keep from any thread (a publish-ack handler); the
 * check function runs on the pubcheck's own thread, and at the end on the
 * owner's (kiln_pubcheck_stop); create, start, stop and destroy from one
 * owner thread. */
#ifndef KILN_PUBCHECK_H
#define KILN_PUBCHECK_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct kiln_pubcheck kiln_pubcheck;

typedef struct {
    uint8_t *data; /* the payload kept (owned by the pubcheck) */
    size_t len;
    int kind;      /* the owner's tag */
    uint64_t seq;  /* the stream sequence JetStream confirmed */
    int64_t at_ms; /* kiln_mono_ms of the confirmation */
} kiln_pubcheck_entry;

typedef enum {
    KILN_PUBCHECK_SETTLED, /* it survived, or was published again, or cannot be helped */
    KILN_PUBCHECK_RETRY,   /* no answer yet (JetStream or a service): ask again next tick */
} kiln_pubcheck_result;

/* Decides about one publish confirmed before a reconnect. */
typedef kiln_pubcheck_result (*kiln_pubcheck_fn)(const kiln_pubcheck_entry *e, void *arg);

/* Keeps the publishes confirmed within keep_ms before the latest one, at
 * most cap (the oldest go first). fn(e, arg) decides about each after a
 * reconnect, on thread `name` (at most 15 characters). *out only on success. */
kiln_status kiln_pubcheck_create(const char *name, int64_t keep_ms, size_t cap,
                                 kiln_pubcheck_fn fn, void *arg, kiln_pubcheck **out);
/* Keeps a copy of data, confirmed at stream sequence seq. */
void kiln_pubcheck_keep(kiln_pubcheck *pc, const void *data, size_t len, int kind, uint64_t seq);
/* Starts the checking thread (what fn needs must be ready). */
kiln_status kiln_pubcheck_start(kiln_pubcheck *pc);
/* Joins the checking thread, then, on the caller's thread and while what fn
 * needs still works, decides about the publishes a reconnect left unchecked:
 * for up to finish_ms (KILN_PUBCHECK_FINISH_MS unless the caller's own stop
 * has less left), waiting while nc (fn's connection) reconnects; connected,
 * it checks once even with nothing left. A process stopped just after a
 * reconnect would otherwise forget them (chaos run 2329). What stays
 * unchecked is logged. NULL-safe. */
#define KILN_PUBCHECK_FINISH_MS 5000
void kiln_pubcheck_stop(kiln_pubcheck *pc, natsConnection *nc, int64_t finish_ms);
/* Frees what is kept; once nothing calls kiln_pubcheck_keep any more. */
void kiln_pubcheck_destroy(kiln_pubcheck *pc); /* NULL-safe */

typedef enum { KILN_PUBCHECK_THERE, KILN_PUBCHECK_LOST, KILN_PUBCHECK_UNKNOWN } kiln_pubcheck_look;

/* Whether stream still holds e's payload at e->seq: LOST when it holds no
 * message there or another one (a restarted server gives lost sequences to
 * new messages); UNKNOWN when JetStream did not answer. For a stream whose
 * messages nothing consumes away (limits retention), LOST means lost. */
kiln_pubcheck_look kiln_pubcheck_look_up(jsCtx *js, const char *stream, const kiln_pubcheck_entry *e);

/* Publishes m again, synchronously (waiting a few seconds at most), with
 * Nats-Msg-Id msg_id (NULL: none, or the one m carries). On KILN_OK
 * *new_seq and *duplicate (either may be NULL) say where the stream put it
 * and whether it already held that id; on failure why is logged at debug,
 * naming `what`. m stays the caller's. */
kiln_status kiln_pubcheck_publish(jsCtx *js, natsMsg *m, const char *msg_id, const char *what,
                                  uint64_t *new_seq, bool *duplicate);

#endif
