/* periodic.h - a thread that calls one function at a fixed interval until
 * stopped: the store's sweep and retention, the consumer's stall check and
 * image retention.
 *
 * Threads: fn runs on the periodic's own thread; start and stop from one
 * owner thread. */
#ifndef KILN_PERIODIC_H
#define KILN_PERIODIC_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

typedef struct kiln_periodic kiln_periodic;

/* Called every interval (the first call one interval after start). A long
 * call should check kiln_periodic_stopping() between its steps. */
typedef void (*kiln_periodic_fn)(kiln_periodic *p, void *arg);

/* Starts thread `name` (at most 15 characters) calling fn(p, arg) every
 * interval_ms (> 0). arg is not owned. *out only on success. */
kiln_status kiln_periodic_start(const char *name, int64_t interval_ms, kiln_periodic_fn fn,
                                void *arg, kiln_periodic **out);
/* The same, with the first call first_ms (>= 0) after start. */
kiln_status kiln_periodic_start_in(const char *name, int64_t first_ms, int64_t interval_ms,
                                   kiln_periodic_fn fn, void *arg, kiln_periodic **out);

/* From fn: the next call comes ms (>= 0) after this one returns instead of
 * one interval; the calls after it keep the interval. */
void kiln_periodic_next_in(kiln_periodic *p, int64_t ms);

/* Asks the thread to stop, waits for a running call to return, joins it
 * and frees p. NULL-safe. */
void kiln_periodic_stop(kiln_periodic *p);

/* Asks every running periodic of the process to stop, without waiting: a
 * call blocked in a slow step (a NATS request with NATS down) then ends
 * while the caller does other shutdown work. Each is still joined and freed
 * by its kiln_periodic_stop(). */
void kiln_periodic_stop_all_soon(void);

/* True once kiln_periodic_stop() (or kiln_periodic_stop_all_soon) was called on p. */
bool kiln_periodic_stopping(kiln_periodic *p);

/* How often a retention of ttl_ms runs its pass, in the store (records)
 * and the consumer (images) alike: ttl/10, at least 1 s, at most 10 min.
 * The consumer's margin before removing an image, min(ttl, 1 h), covers
 * one such interval of the store's. */
int64_t kiln_periodic_retention_ms(int64_t ttl_ms);

#endif
