/* bench_util.h - helpers shared by the kiln-bench workloads: clocks,
 * percentiles, job ids that carry their index, peak RSS, result lines, and a
 * jobs.done listener that timestamps each job's first completion. */
#ifndef KILN_BENCH_UTIL_H
#define KILN_BENCH_UTIL_H

#include <nats/nats.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define BENCH_ID_MAX 65
#define BENCH_MAX_JOBS 2000000u /* cap on any per-run job count (arrays are sized by it) */

int64_t bench_now_us(void); /* CLOCK_MONOTONIC microseconds */

/* Sleeps until the monotonic time at_us (returns at once if it passed). */
void bench_sleep_until_us(int64_t at_us);

/* p50 and p99 in milliseconds of the n samples (microseconds) in d, which
 * is sorted in place. Both are -1 when n == 0. */
void bench_percentiles_ms(int64_t *d, size_t n, double *p50, double *p99);

/* "<prefix>-<index>", a valid Kiln job id. */
void bench_id(char *buf, size_t len, const char *prefix, unsigned index);
/* The index of an id made by bench_id with this prefix, or -1. */
long bench_id_index(const char *id, const char *prefix);

/* A prefix unique to this process and moment (letters and digits). */
void bench_prefix(char *buf, size_t len, const char *tag);

/* Before a timed measurement: sync, then waits until the machine is below
 * max_busy_pct CPU over 0.5 s (at most max_wait_ms), as bench/run.sh's
 * settle does between phases. Says on stderr how long it took. */
void bench_settle(int max_busy_pct, int64_t max_wait_ms);

double bench_rss_mb(void); /* this process's peak RSS (VmHWM) */
double bench_rss_mb_of(long pid); /* another process's peak RSS; -1 when unknown */

/* Prints `FIG name=... workload=... jobs=N secs=S rate=R p50_ms=X p99_ms=Y rss_mb=M`
 * plus extra (may be NULL) to stdout. A negative p50/p99 prints as "-". */
void bench_fig(const char *name, const char *workload, unsigned jobs, double secs, double p50,
               double p99, const char *extra);

/* Listens on jobs.done for the ids "<prefix>-<0..n-1>" and records the
 * monotonic time of each job's first event. Callbacks run on a nats.c thread. */
typedef struct {
    natsConnection *nc;
    natsSubscription *sub;
    char prefix[48];
    unsigned n;
    int64_t *done_us;     /* n entries, 0 = not yet */
    /* Per job, from the event's JobStatus times (wall clock, ms resolution,
     * stored in us): created -> started (queue, fetch, store check),
     * started -> completed (provider call, image save, transition),
     * completed -> event received (store apply, jobs.done publish). -1 = unknown. */
    int64_t *stage_us[3];
    atomic_uint done;     /* distinct jobs seen */
    atomic_uint not_completed; /* events whose Kiln-Status is not "completed" */
    atomic_uint dups;     /* repeated events (at-least-once delivery) */
    atomic_uint foreign;  /* events for other ids */
} bench_done;

kiln_status bench_done_start(bench_done *d, const char *url, const char *prefix, unsigned n);
/* Waits until every job is done or timeout_ms passes; returns KILN_ETIMEOUT then. */
kiln_status bench_done_wait(bench_done *d, int64_t timeout_ms);
void bench_done_stop(bench_done *d);

/* Formats "queue=P50/P99,run=P50/P99,done=P50/P99" (ms) over the finished jobs. */
void bench_done_stages(const bench_done *d, char *buf, size_t len);

#endif
