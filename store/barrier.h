/* barrier.h - "has the store applied everything KILN_JOBS held when this
 * request came?" Used on a get miss and for sync requests, so a GET right
 * after the 202 never answers 404.
 *
 * Threads: the apply thread calls barrier_fetch_begin/idle and
 * barrier_applied; request threads call barrier_wait. */
#ifndef STORE_BARRIER_H
#define STORE_BARRIER_H

#include <nats/nats.h>
#include <stdint.h>

#include "status.h"

#define BARRIER_MAX_WAIT_MS 2000

typedef struct barrier barrier;

/* applied_seq: the stream sequence already applied (from the meta CF). */
kiln_status barrier_create(jsCtx *js, uint64_t applied_seq, barrier **out);
void barrier_destroy(barrier *b); /* NULL-safe; no waiter may remain */

/* Apply thread: a fetch starts (returns its epoch); it came back empty. */
uint64_t barrier_fetch_begin(barrier *b);
void barrier_fetch_idle(barrier *b, uint64_t epoch);
/* Apply thread: every message up to seq is written to RocksDB. */
void barrier_applied(barrier *b, uint64_t seq);
uint64_t barrier_applied_seq(barrier *b);
/* The epoch of the latest fetch begun, and of the latest one that came back
 * empty: a fetch begun after a moment (epoch above the fetch epoch read
 * then) that found nothing has *idle_epoch above it. */
void barrier_epochs(barrier *b, uint64_t *fetch_epoch, uint64_t *idle_epoch);

/* Request threads: reads KILN_JOBS' last sequence and waits until the apply
 * loop has written it, or until a fetch that started afterwards found
 * nothing left (messages that were deleted never reach the store). Waits at
 * most timeout_ms. KILN_OK when caught up, KILN_ETIMEOUT, or the NATS error. */
kiln_status barrier_wait(barrier *b, int64_t timeout_ms);

/* Request threads: waits (≤ timeout_ms) until the apply loop has written
 * everything up to stream sequence seq - a message this process published
 * itself (the store's cancel). KILN_OK or KILN_ETIMEOUT. */
kiln_status barrier_wait_seq(barrier *b, uint64_t seq, int64_t timeout_ms);

#endif
