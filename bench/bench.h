/* bench.h - the kiln-bench workloads, one function per subcommand. Each
 * prints its figures as `FIG ...` lines on stdout (see bench_util.h) for
 * bench/run.sh, and returns non-zero when the workload could not run. */
#ifndef KILN_BENCH_H
#define KILN_BENCH_H

#include <stdint.h>

typedef struct {
    const char *url;        /* NATS */
    unsigned jobs;          /* w12, w1, backlog */
    unsigned rate;          /* w3: submits per second */
    unsigned secs;          /* w3: duration */
    int64_t timeout_ms;     /* longest wait for completions */
    const char *ready_file; /* backlog: a line written to it once the backlog is published */
    unsigned sizes[4];      /* store: store sizes to measure at */
    unsigned nsizes;
    unsigned samples;       /* store: GETs per size */
    int64_t fill_deadline_ms; /* store: stop filling after this long */
    long store_pid;         /* store: the kiln-store process, for its peak RSS (0 = unknown) */
} bench_args;

/* The JobRequest every workload submits: user "bench", a fixed ~120-character
 * prompt, defaults otherwise (a packed request is ~200 bytes). */
#define BENCH_USER "bench"
#define BENCH_PROMPT                                                                       \
    "bench job: a red fox in fresh snow at dawn, watercolour on rough paper, soft light, " \
    "muted palette, wide angle, fine detail"

int bench_w12(const bench_args *a);     /* kiln-W1 and kiln-W2 */
int bench_w1(const bench_args *a);      /* one kiln-W1 run, its jobs purged after */
int bench_backlog(const bench_args *a); /* a kiln-W1 run whose jobs a consumer started later drains */
int bench_w3(const bench_args *a);      /* paced submit -> jobs.done latency */
int bench_store(const bench_args *a);   /* store GET latency at several store sizes */

#endif
