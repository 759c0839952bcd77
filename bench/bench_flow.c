/* bench_flow.c - the job-flow workloads: kiln-W1/W2 (bulk submit through the
 * client library, then every jobs.done), the backlog drain, and kiln-W3
 * (submit -> jobs.done latency at a steady rate). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_util.h"
#include "kiln_client.h"
#include "subjects.h"

/* Submits job index i of prefix without waiting for its ack. */
static kiln_status flow_submit(kiln_client *c, const char *prefix, unsigned i)
{
    char id[BENCH_ID_MAX], out[BENCH_ID_MAX], err[256] = "";
    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    bench_id(id, sizeof id, prefix, i);
    spec.id = id;
    spec.user_id = BENCH_USER;
    spec.prompt = BENCH_PROMPT;
    kiln_status st = kiln_client_submit_async(c, &spec, out, sizeof out, err, sizeof err);
    if (st != KILN_OK) fprintf(stderr, "bench: submit %s: %s %s\n", id, kiln_status_str(st), err);
    return st;
}

/* Latencies done_us[i] - sub_us[i] of the jobs that finished. */
static void flow_latency(const bench_done *d, const int64_t *sub_us, double *p50, double *p99)
{
    int64_t *lat = malloc(sizeof *lat * d->n);
    size_t k = 0;
    *p50 = *p99 = -1;
    if (lat == NULL) return;
    for (unsigned i = 0; i < d->n; i++)
        if (d->done_us[i] != 0 && sub_us[i] != 0) lat[k++] = d->done_us[i] - sub_us[i];
    bench_percentiles_ms(lat, k, p50, p99);
    free(lat);
}

static void flow_extra(char *buf, size_t len, const bench_done *d, uint64_t failed)
{
    char stages[160];
    bench_done_stages(d, stages, sizeof stages);
    snprintf(buf, len, "done=%u not_completed=%u dup_events=%u submit_failed=%" PRIu64
             " stages_ms_p50/p99=%s",
             atomic_load(&d->done), atomic_load(&d->not_completed), atomic_load(&d->dups), failed,
             stages);
}

int bench_w12(const bench_args *a)
{
    kiln_client *c = NULL;
    bench_done d;
    int64_t *sub_us = NULL;
    char prefix[48], extra[512];
    uint64_t failed = 0;
    int rc = 1;
    double p50, p99;

    bench_prefix(prefix, sizeof prefix, "w");
    memset(&d, 0, sizeof d);
    sub_us = calloc(a->jobs, sizeof *sub_us);
    if (sub_us == NULL) goto out;
    if (kiln_client_connect(a->url, &c) != KILN_OK) {
        fprintf(stderr, "bench: cannot connect to %s\n", a->url);
        goto out;
    }
    if (bench_done_start(&d, a->url, prefix, a->jobs) != KILN_OK) goto out;

    int64_t t0 = bench_now_us();
    for (unsigned i = 0; i < a->jobs; i++) {
        sub_us[i] = bench_now_us();
        if (flow_submit(c, prefix, i) != KILN_OK) goto out;
    }
    kiln_status st = kiln_client_flush(c, a->timeout_ms, &failed);
    int64_t t1 = bench_now_us();
    if (st != KILN_OK) {
        fprintf(stderr, "bench: flush: %s\n", kiln_status_str(st));
        goto out;
    }
    snprintf(extra, sizeof extra, "submit_failed=%" PRIu64, failed);
    /* Per-publish ack times are internal to the client library: no percentiles. */
    bench_fig("kiln-W1", "W1-live", a->jobs, (t1 - t0) / 1e6, -1, -1, extra);

    st = bench_done_wait(&d, a->timeout_ms);
    int64_t t2 = bench_now_us();
    flow_latency(&d, sub_us, &p50, &p99);
    flow_extra(extra, sizeof extra, &d, failed);
    /* On a timeout the line reports the jobs that did finish within it. */
    bench_fig("kiln-W2", "W2", atomic_load(&d.done), (t2 - t0) / 1e6, p50, p99, extra);
    if (st != KILN_OK) fprintf(stderr, "bench: W2: only %u of %u jobs done within %" PRId64 " ms\n",
                               atomic_load(&d.done), a->jobs, a->timeout_ms);
    rc = st == KILN_OK ? 0 : 1;
out:
    bench_done_stop(&d);
    kiln_client_destroy(c);
    free(sub_us);
    return rc;
}

/* One kiln-W1 run: n jobs of prefix published and every ack awaited; its
 * seconds in *secs. */
static int flow_w1_run(kiln_client *c, const char *prefix, unsigned n, int64_t timeout_ms, double *secs)
{
    uint64_t failed = 0;
    int64_t t0 = bench_now_us();
    for (unsigned i = 0; i < n; i++)
        if (flow_submit(c, prefix, i) != KILN_OK) return -1;
    if (kiln_client_flush(c, timeout_ms, &failed) != KILN_OK || failed > 0) {
        fprintf(stderr, "bench: backlog publish not fully acknowledged failed=%" PRIu64 "\n", failed);
        return -1;
    }
    *secs = (bench_now_us() - t0) / 1e6;
    return 0;
}

/* Removes the jobs a kiln-W1 run left on jobs.generate while nothing
 * consumes (the store and consumer are stopped), so that only the last
 * run's make the backlog and the stack W2 inherits is the same whatever
 * the number of runs. */
static int flow_purge_w1(const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions o;
    jsErrCode jerr = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK) s = jsOptions_Init(&o);
    if (s == NATS_OK) {
        o.Stream.Purge.Subject = KILN_SUBJ_GENERATE;
        s = js_PurgeStream(js, KILN_STREAM_JOBS, &o, &jerr);
    }
    if (s != NATS_OK)
        fprintf(stderr, "bench: purging %s of %s: %s (js_err %d)\n", KILN_SUBJ_GENERATE, KILN_STREAM_JOBS,
                natsStatus_GetText(s), (int)jerr);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s == NATS_OK ? 0 : -1;
}

/* One kiln-W1 run into prefix; its figure line printed. */
static int flow_w1(kiln_client *c, const bench_args *a, const char *prefix)
{
    double secs = 0;
    if (flow_w1_run(c, prefix, a->jobs, a->timeout_ms, &secs) != 0) return -1;
    bench_fig("kiln-W1", "W1", a->jobs, secs, -1, -1, NULL);
    return 0;
}

/* kiln-W1 alone, its jobs purged after: run.sh makes its runs but the last
 * this way, each right after a limit-W1 run (the machine's phase moves the
 * rates of a 1-2 s run; neighbours share it). Like limit-W1, nothing
 * consumes: the store and the consumer are stopped meanwhile. */
int bench_w1(const bench_args *a)
{
    kiln_client *c = NULL;
    char prefix[48];
    int rc = 1;
    bench_prefix(prefix, sizeof prefix, "w");
    if (kiln_client_connect(a->url, &c) != KILN_OK) {
        fprintf(stderr, "bench: cannot connect to %s\n", a->url);
        goto out;
    }
    if (flow_w1(c, a, prefix) == 0 && flow_purge_w1(a->url) == 0) rc = 0;
out:
    kiln_client_destroy(c);
    return rc;
}

int bench_backlog(const bench_args *a)
{
    kiln_client *c = NULL;
    bench_done d;
    char prefix[48], extra[512];
    int rc = 1;

    bench_prefix(prefix, sizeof prefix, "b");
    memset(&d, 0, sizeof d);
    if (kiln_client_connect(a->url, &c) != KILN_OK) {
        fprintf(stderr, "bench: cannot connect to %s\n", a->url);
        goto out;
    }
    /* kiln-W1's last run: its jobs are the backlog (run.sh starts the store
     * and the consumer only after the ready file). */
    if (flow_w1(c, a, prefix) != 0) goto out;
    if (bench_done_start(&d, a->url, prefix, a->jobs) != KILN_OK) goto out;
    /* Tell run.sh to start the consumer (a line, for a FIFO's reader); the
     * clock starts now. */
    FILE *f = fopen(a->ready_file, "w");
    if (f == NULL) {
        fprintf(stderr, "bench: cannot open %s\n", a->ready_file);
        goto out;
    }
    int werr = fputs("ready\n", f) == EOF;
    if (fclose(f) != 0 || werr) {
        fprintf(stderr, "bench: cannot write %s\n", a->ready_file);
        goto out;
    }
    int64_t t0 = bench_now_us();
    kiln_status st = bench_done_wait(&d, a->timeout_ms);
    int64_t t1 = bench_now_us();
    flow_extra(extra, sizeof extra, &d, 0);
    bench_fig("kiln-drain", "backlog", atomic_load(&d.done), (t1 - t0) / 1e6, -1, -1, extra);
    rc = st == KILN_OK ? 0 : 1;
out:
    bench_done_stop(&d);
    kiln_client_destroy(c);
    return rc;
}

/* KILN_BENCH_DUMP=FILE: one line per job (submit offset, total and stage
 * latencies in microseconds, -1 = unknown) for looking at a tail by hand. */
static void flow_dump(const bench_done *d, const int64_t *sub_us, int64_t t0)
{
    const char *path = getenv("KILN_BENCH_DUMP");
    if (path == NULL || path[0] == '\0') return;
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "bench: cannot write %s\n", path);
        return;
    }
    fprintf(f, "# job submit_us total_us queue_us run_us done_us\n");
    for (unsigned i = 0; i < d->n; i++)
        fprintf(f, "%u %lld %lld %lld %lld %lld\n", i, (long long)(sub_us[i] - t0),
                (long long)(d->done_us[i] != 0 ? d->done_us[i] - sub_us[i] : -1),
                (long long)d->stage_us[0][i], (long long)d->stage_us[1][i],
                (long long)d->stage_us[2][i]);
    fclose(f);
}

int bench_w3(const bench_args *a)
{
    kiln_client *c = NULL;
    bench_done d;
    int64_t *sub_us = NULL;
    char prefix[48], extra[512];
    uint64_t failed = 0;
    int rc = 1;
    double p50, p99;
    unsigned n = a->rate * a->secs;

    bench_prefix(prefix, sizeof prefix, "l");
    memset(&d, 0, sizeof d);
    if (n == 0 || n > BENCH_MAX_JOBS) goto out;
    sub_us = calloc(n, sizeof *sub_us);
    if (sub_us == NULL) goto out;
    if (kiln_client_connect(a->url, &c) != KILN_OK) {
        fprintf(stderr, "bench: cannot connect to %s\n", a->url);
        goto out;
    }
    if (bench_done_start(&d, a->url, prefix, n) != KILN_OK) goto out;

    /* Open loop: job i is due at t0 + i/rate whatever happened before, so a
     * slow system cannot slow the offered load down. */
    int64_t t0 = bench_now_us() + 1000;
    unsigned late = 0;
    for (unsigned i = 0; i < n; i++) {
        int64_t due = t0 + (int64_t)i * 1000000 / a->rate;
        bench_sleep_until_us(due);
        sub_us[i] = bench_now_us();
        if (sub_us[i] - due > 1000) late++;
        if (flow_submit(c, prefix, i) != KILN_OK) goto out;
    }
    int64_t t1 = bench_now_us();
    kiln_status st = kiln_client_flush(c, a->timeout_ms, &failed);
    if (st == KILN_OK) st = bench_done_wait(&d, a->timeout_ms);
    flow_latency(&d, sub_us, &p50, &p99);
    flow_dump(&d, sub_us, t0);
    flow_extra(extra, sizeof extra, &d, failed);
    size_t off = strlen(extra);
    snprintf(extra + off, sizeof extra - off, " offered_rate=%u late_submits=%u", a->rate, late);
    bench_fig("kiln-W3", "W3", atomic_load(&d.done), (t1 - t0) / 1e6, p50, p99, extra);
    if (st != KILN_OK) fprintf(stderr, "bench: W3: only %u of %u jobs done\n", atomic_load(&d.done), n);
    rc = st == KILN_OK ? 0 : 1;
out:
    bench_done_stop(&d);
    kiln_client_destroy(c);
    free(sub_us);
    return rc;
}
