/* kiln_bench.c - kiln-bench: runs one Kiln benchmark workload against a
 * running Kiln (bench/run.sh starts everything and calls it per workload). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_util.h"
#include "log.h"

static void kb_usage(void)
{
    fprintf(stderr,
            "usage: kiln-bench w12|w1|backlog|w3|store --url NATS_URL [options]\n"
            "  --jobs N            w12, w1, backlog: jobs to submit (default 100000)\n"
            "  --rate N --secs N   w3: paced submits per second and duration (1000, 10)\n"
            "  --timeout-ms N      longest wait for completions (default 120000)\n"
            "  --ready-file PATH   backlog: a line written to it (a file or FIFO) once the backlog is durable\n"
            "  --sizes A,B         store: store sizes to measure GETs at (10000,1000000)\n"
            "  --samples N         store: GETs per size (default 5000)\n"
            "  --fill-deadline-ms N  store: stop filling after this long (default 150000)\n"
            "  --store-pid PID     store: the kiln-store process, to report its peak RSS\n");
}

static int kb_uint(const char *s, unsigned max, unsigned *out)
{
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || v > max) return -1;
    *out = (unsigned)v;
    return 0;
}

static int kb_sizes(const char *s, bench_args *a)
{
    char buf[128];
    char *save = NULL;
    if (strlen(s) >= sizeof buf) return -1;
    memcpy(buf, s, strlen(s) + 1);
    a->nsizes = 0;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (a->nsizes == sizeof a->sizes / sizeof a->sizes[0]) return -1;
        if (kb_uint(t, BENCH_MAX_JOBS, &a->sizes[a->nsizes]) != 0 || a->sizes[a->nsizes] == 0)
            return -1;
        a->nsizes++;
    }
    return a->nsizes > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    bench_args a = {.jobs = 100000, .rate = 1000, .secs = 10, .timeout_ms = 120000,
                    .sizes = {10000, 1000000}, .nsizes = 2, .samples = 5000,
                    .fill_deadline_ms = 150000};
    unsigned v;
    if (argc < 2) {
        kb_usage();
        return 2;
    }
    const char *cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = val == NULL;
        if (!bad && strcmp(o, "--url") == 0) a.url = val;
        else if (!bad && strcmp(o, "--jobs") == 0) bad = kb_uint(val, BENCH_MAX_JOBS, &a.jobs);
        else if (!bad && strcmp(o, "--rate") == 0) bad = kb_uint(val, 100000, &a.rate);
        else if (!bad && strcmp(o, "--secs") == 0) bad = kb_uint(val, 3600, &a.secs);
        else if (!bad && strcmp(o, "--timeout-ms") == 0) {
            bad = kb_uint(val, 3600000, &v);
            a.timeout_ms = v;
        } else if (!bad && strcmp(o, "--ready-file") == 0) a.ready_file = val;
        else if (!bad && strcmp(o, "--sizes") == 0) bad = kb_sizes(val, &a);
        else if (!bad && strcmp(o, "--samples") == 0) bad = kb_uint(val, 1000000, &a.samples);
        else if (!bad && strcmp(o, "--fill-deadline-ms") == 0) {
            bad = kb_uint(val, 3600000, &v);
            a.fill_deadline_ms = v;
        } else if (!bad && strcmp(o, "--store-pid") == 0) {
            bad = kb_uint(val, 1u << 30, &v);
            a.store_pid = (long)v;
        } else bad = 1;
        if (bad) {
            fprintf(stderr, "kiln-bench: bad option %s\n", o);
            kb_usage();
            return 2;
        }
        i++;
    }
    if (a.url == NULL || a.jobs == 0 || a.rate == 0 || a.secs == 0 || a.samples == 0) {
        kb_usage();
        return 2;
    }
    kiln_log_init("kiln-bench");
    if (kiln_log_set_level("warn") != 0) return 2;
    if (strcmp(cmd, "w12") == 0) return bench_w12(&a);
    if (strcmp(cmd, "w1") == 0) return bench_w1(&a);
    if (strcmp(cmd, "backlog") == 0) {
        if (a.ready_file == NULL) {
            kb_usage();
            return 2;
        }
        return bench_backlog(&a);
    }
    if (strcmp(cmd, "w3") == 0) return bench_w3(&a);
    if (strcmp(cmd, "store") == 0) return bench_store(&a);
    kb_usage();
    return 2;
}
