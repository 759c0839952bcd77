/* provision.h - idempotent create-or-update of Kiln's streams and durable
 * consumers. Every binary calls it at start so none depends on start order
 * (and, with interest retention, no job is published before its durables
 * exist). */
#ifndef KILN_PROVISION_H
#define KILN_PROVISION_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stdint.h>

#include "status.h"

typedef struct {
    int64_t ack_wait_ms;     /* worker durables; default 30000 */
    int64_t max_ack_pending; /* worker durables; default 20000 */
    int64_t dup_window_ms;   /* KILN_JOBS duplicate window; default 30000 */
    int64_t done_max_age_ms; /* KILN_DONE retention; default 7 days */
    int64_t dead_max_age_ms; /* KILN_DEAD retention; default 30 days */
    int64_t events_max_age_ms; /* KILN_EVENTS retention (SSE replay); default 1 hour */
    bool update_existing;    /* false (default): only create what is missing. The
                              * consumer, which owns AckWait, passes true so its
                              * settings reach existing streams and durables. */
    int64_t retry_for_ms;    /* 0 (default): a timeout fails at once (the CLI).
                              * The services pass their connect timeout: a NATS
                              * restart during start-up is waited out. */
} kiln_provision_opts;

/* Fills o with the defaults above. */
void kiln_provision_opts_init(kiln_provision_opts *o);

/* Creates or updates streams KILN_JOBS, KILN_DONE, KILN_DEAD, KILN_EVENTS and the durables
 * kiln-worker-{high,normal,low} and kiln-store. Safe to call concurrently from
 * several processes: a pass that JetStream answered with an error (a lost
 * create race) is run again, up to 4 passes in ~0.7 s. A pass that timed out
 * or found NATS unreachable is run again until o->retry_for_ms has passed;
 * KILN_ESTOPPED when a SIGTERM/SIGINT ends such a wait (after
 * kiln_nats_stop_on_signals()). */
kiln_status kiln_provision(jsCtx *js, const kiln_provision_opts *o);

/* The settings of the store's durable (kiln-store) for a durable called
 * name (not copied: it must outlive cc) that delivers KILN_JOBS from
 * start_seq on, or from the stream's start when start_seq is 0. */
kiln_status kiln_provision_store_config(jsConsumerConfig *cc, const char *name, uint64_t start_seq);

#endif
