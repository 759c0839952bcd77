/* bench_util.c - clocks, percentiles, ids, RSS, result lines and the
 * jobs.done listener used by the kiln-bench workloads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "clock.h"
#include "kiln.pb-c.h"
#include "natsconn.h"
#include "subjects.h"

int64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void bench_sleep_until_us(int64_t at_us)
{
    struct timespec ts = {.tv_sec = at_us / 1000000, .tv_nsec = (long)(at_us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int bench_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void bench_percentiles_ms(int64_t *d, size_t n, double *p50, double *p99)
{
    *p50 = *p99 = -1;
    if (n == 0) return;
    qsort(d, n, sizeof *d, bench_cmp_i64);
    /* Nearest rank: the smallest sample with at least p% of samples at or below it. */
    size_t r50 = (n * 50 + 99) / 100, r99 = (n * 99 + 99) / 100;
    *p50 = d[r50 > 0 ? r50 - 1 : 0] / 1000.0;
    *p99 = d[r99 > 0 ? r99 - 1 : 0] / 1000.0;
}

void bench_id(char *buf, size_t len, const char *prefix, unsigned index)
{
    snprintf(buf, len, "%s-%u", prefix, index);
}

long bench_id_index(const char *id, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (id == NULL || strncmp(id, prefix, pl) != 0 || id[pl] != '-') return -1;
    const char *p = id + pl + 1;
    if (*p < '0' || *p > '9') return -1;
    char *end = NULL;
    unsigned long v = strtoul(p, &end, 10);
    if (*end != '\0' || v >= BENCH_MAX_JOBS) return -1;
    return (long)v;
}

void bench_prefix(char *buf, size_t len, const char *tag)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, len, "%s%lx%lx", tag, (unsigned long)getpid(),
             (unsigned long)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000) & 0xffffffffUL);
}

static double bench_hwm_of(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[256];
    double mb = -1;
    if (f == NULL) return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long kb;
        if (sscanf(line, "VmHWM: %lu kB", &kb) == 1) mb = kb / 1024.0;
    }
    fclose(f);
    return mb;
}

/* The busy and idle jiffies of all CPUs (the "cpu" line of /proc/stat;
 * idle counts iowait); 0 when it cannot be read. */
static int util_cpu_jiffies(unsigned long long *busy, unsigned long long *idle)
{
    unsigned long long user, nice, sys, idl, iowait, irq, softirq;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL) return 0;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &sys, &idl, &iowait,
                   &irq, &softirq);
    fclose(f);
    if (n != 7) return 0;
    *busy = user + nice + sys + irq + softirq;
    *idle = idl + iowait;
    return 1;
}

void bench_settle(int max_busy_pct, int64_t max_wait_ms)
{
    int64_t t0 = bench_now_us();
    int pct = -1;
    sync();
    for (;;) {
        unsigned long long b0, i0, b1, i1;
        if (!util_cpu_jiffies(&b0, &i0)) break;
        bench_sleep_until_us(bench_now_us() + 500000);
        if (!util_cpu_jiffies(&b1, &i1)) break;
        unsigned long long all = (b1 - b0) + (i1 - i0);
        pct = all > 0 ? (int)(100 * (b1 - b0) / all) : 0;
        if (pct < max_busy_pct) break;
        if (bench_now_us() - t0 >= max_wait_ms * 1000) {
            fprintf(stderr, "bench: the machine stayed busy (%d%% CPU); measuring anyway\n", pct);
            break;
        }
    }
    fprintf(stderr, "bench: settled in %.1fs (%d%% CPU)\n", (bench_now_us() - t0) / 1e6, pct);
}

double bench_rss_mb(void)
{
    double mb = bench_hwm_of("/proc/self/status");
    return mb < 0 ? 0 : mb;
}

double bench_rss_mb_of(long pid)
{
    char path[64];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    return bench_hwm_of(path);
}

static void bench_fmt_ms(char *buf, size_t len, double v)
{
    if (v < 0) snprintf(buf, len, "-");
    else snprintf(buf, len, "%.3f", v);
}

void bench_fig(const char *name, const char *workload, unsigned jobs, double secs, double p50,
               double p99, const char *extra)
{
    char a[32], b[32];
    bench_fmt_ms(a, sizeof a, p50);
    bench_fmt_ms(b, sizeof b, p99);
    printf("FIG name=%s workload=%s jobs=%u secs=%.3f rate=%.0f p50_ms=%s p99_ms=%s rss_mb=%.1f%s%s\n",
           name, workload, jobs, secs, secs > 0 ? jobs / secs : 0, a, b, bench_rss_mb(),
           extra != NULL ? " " : "", extra != NULL ? extra : "");
    fflush(stdout);
}

/* jobs.done handler, on the subscription's nats.c thread. */
static void bench_on_done(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    bench_done *d = closure;
    const char *id = NULL, *state = NULL;
    (void)nc;
    (void)sub;
    int64_t now = bench_now_us();
    if (natsMsgHeader_Get(m, KILN_HDR_JOB_ID, &id) != NATS_OK) id = NULL;
    long i = bench_id_index(id, d->prefix);
    if (i < 0 || (unsigned long)i >= d->n) {
        atomic_fetch_add(&d->foreign, 1);
    } else if (d->done_us[i] != 0) {
        atomic_fetch_add(&d->dups, 1);
    } else {
        d->done_us[i] = now;
        int len = natsMsg_GetDataLength(m);
        Kiln__V1__JobStatus *js =
            len > 0 ? kiln__v1__job_status__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m))
                    : NULL;
        if (js != NULL && js->created_at_ms > 0 && js->started_at_ms > 0 && js->completed_at_ms > 0) {
            d->stage_us[0][i] = (js->started_at_ms - js->created_at_ms) * 1000;
            d->stage_us[1][i] = (js->completed_at_ms - js->started_at_ms) * 1000;
            d->stage_us[2][i] = (kiln_now_ms() - js->completed_at_ms) * 1000;
        }
        if (js != NULL) kiln__v1__job_status__free_unpacked(js, NULL);
        if (natsMsgHeader_Get(m, KILN_HDR_STATUS, &state) != NATS_OK || state == NULL ||
            strcmp(state, "completed") != 0)
            atomic_fetch_add(&d->not_completed, 1);
        atomic_fetch_add(&d->done, 1);
    }
    natsMsg_Destroy(m);
}

kiln_status bench_done_start(bench_done *d, const char *url, const char *prefix, unsigned n)
{
    kiln_status st;
    memset(d, 0, sizeof *d);
    if (n == 0 || n > BENCH_MAX_JOBS) return KILN_EINVAL;
    snprintf(d->prefix, sizeof d->prefix, "%s", prefix);
    d->n = n;
    d->done_us = calloc(n, sizeof *d->done_us);
    if (d->done_us == NULL) return KILN_ENOMEM;
    for (int k = 0; k < 3; k++) {
        d->stage_us[k] = malloc(sizeof *d->stage_us[k] * n);
        if (d->stage_us[k] == NULL) {
            bench_done_stop(d);
            return KILN_ENOMEM;
        }
        for (unsigned i = 0; i < n; i++) d->stage_us[k][i] = -1;
    }
    st = kiln_nats_connect(url, "kiln-bench-done", 5000, &d->nc, NULL);
    if (st != KILN_OK) goto out;
    natsStatus s = natsConnection_Subscribe(&d->sub, d->nc, KILN_SUBJ_DONE, bench_on_done, d);
    /* Never drop an event as a slow consumer: the count must be exact. */
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(d->sub, -1, -1);
    if (s == NATS_OK) s = natsConnection_Flush(d->nc); /* the SUB is registered before any publish */
    if (s != NATS_OK) st = kiln_nats_status(s);
out:
    if (st != KILN_OK) bench_done_stop(d);
    return st;
}

kiln_status bench_done_wait(bench_done *d, int64_t timeout_ms)
{
    int64_t deadline = bench_now_us() + timeout_ms * 1000;
    while (atomic_load(&d->done) < d->n) {
        if (bench_now_us() >= deadline) return KILN_ETIMEOUT;
        usleep(200);
    }
    return KILN_OK;
}

void bench_done_stop(bench_done *d)
{
    /* Drain so no callback still runs when done_us is freed. */
    if (d->sub != NULL && natsSubscription_Drain(d->sub) == NATS_OK)
        (void)natsSubscription_WaitForDrainCompletion(d->sub, 2000);
    natsSubscription_Destroy(d->sub);
    d->sub = NULL;
    kiln_nats_close(d->nc, NULL);
    d->nc = NULL;
    free(d->done_us);
    d->done_us = NULL;
    for (int k = 0; k < 3; k++) {
        free(d->stage_us[k]);
        d->stage_us[k] = NULL;
    }
}

void bench_done_stages(const bench_done *d, char *buf, size_t len)
{
    static const char *names[3] = {"queue", "run", "done"};
    size_t off = 0;
    buf[0] = '\0';
    int64_t *v = malloc(sizeof *v * (d->n > 0 ? d->n : 1));
    if (v == NULL) return;
    for (int k = 0; k < 3 && off < len; k++) {
        size_t c = 0;
        double p50, p99;
        for (unsigned i = 0; i < d->n; i++)
            if (d->stage_us[k][i] >= 0) v[c++] = d->stage_us[k][i];
        bench_percentiles_ms(v, c, &p50, &p99);
        int w = snprintf(buf + off, len - off, "%s%s=%.0f/%.0f", k > 0 ? "," : "", names[k], p50, p99);
        if (w < 0) break;
        off += (size_t)w;
    }
    free(v);
}
