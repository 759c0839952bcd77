/* bench_store.c - kiln-store GET latency at growing store sizes: fills the
 * store with pending jobs (JobRequests published with no consumer running,
 * so each becomes a real record with its indexes), waits until the store has
 * applied them all, then times jobs.status requests for random ids. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_util.h"
#include "kiln_client.h"
#include "natsconn.h"
#include "subjects.h"

#define STORE_POLL_US 100000

/* Stream sequence up to which the store's durable has acked everything, and
 * whether nothing is left for it. */
static kiln_status store_progress(jsCtx *js, uint64_t *applied, int *caught_up)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode je = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, KILN_STREAM_JOBS, KILN_DURABLE_STORE, NULL, &je);
    if (s != NATS_OK) return kiln_nats_status(s);
    *applied = ci->AckFloor.Stream;
    *caught_up = ci->NumPending == 0 && ci->NumAckPending == 0;
    jsConsumerInfo_Destroy(ci);
    return KILN_OK;
}

/* Publishes jobs [from, to); stops early at deadline_us. Returns the number published. */
static unsigned store_fill(kiln_client *c, const char *prefix, unsigned from, unsigned to,
                           int64_t deadline_us)
{
    char id[BENCH_ID_MAX], out[BENCH_ID_MAX], err[256] = "";
    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    spec.user_id = BENCH_USER;
    spec.prompt = BENCH_PROMPT;
    spec.id = id;
    unsigned i = from;
    for (; i < to; i++) {
        if ((i & 1023) == 0 && bench_now_us() >= deadline_us) break;
        bench_id(id, sizeof id, prefix, i);
        kiln_status st = kiln_client_submit_async(c, &spec, out, sizeof out, err, sizeof err);
        if (st != KILN_OK) {
            fprintf(stderr, "bench: store fill %s: %s %s\n", id, kiln_status_str(st), err);
            break;
        }
    }
    uint64_t failed = 0;
    if (kiln_client_flush(c, 60000, &failed) != KILN_OK || failed > 0)
        fprintf(stderr, "bench: store fill: %" PRIu64 " publishes not acknowledged\n", failed);
    return i - from;
}

static uint64_t store_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Times `samples` jobs.status requests for random ids in [0, size). */
static void store_gets(kiln_client *c, const char *prefix, unsigned size, unsigned samples,
                       const char *workload, long store_pid)
{
    int64_t *lat = malloc(sizeof *lat * samples);
    char id[BENCH_ID_MAX], extra[160];
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ size;
    unsigned errors = 0, k = 0;
    double p50, p99;
    if (lat == NULL || size == 0) {
        free(lat);
        return;
    }
    int64_t t0 = bench_now_us();
    for (unsigned i = 0; i < samples; i++) {
        Kiln__V1__JobStatus *st = NULL;
        bench_id(id, sizeof id, prefix, (unsigned)(store_rand(&seed) % size));
        int64_t a = bench_now_us();
        kiln_status s = kiln_client_get(c, id, &st);
        int64_t b = bench_now_us();
        if (s != KILN_OK || st == NULL || st->id == NULL || strcmp(st->id, id) != 0) errors++;
        else lat[k++] = b - a;
        if (st != NULL) kiln__v1__job_status__free_unpacked(st, NULL);
    }
    int64_t t1 = bench_now_us();
    bench_percentiles_ms(lat, k, &p50, &p99);
    snprintf(extra, sizeof extra, "store_jobs=%u gets=%u get_errors=%u store_rss_mb=%.1f", size,
             samples, errors, bench_rss_mb_of(store_pid));
    bench_fig("kiln-store", workload, samples, (t1 - t0) / 1e6, p50, p99, extra);
    free(lat);
}

int bench_store(const bench_args *a)
{
    kiln_client *c = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    char prefix[48], extra[160], wl[32];
    unsigned have = 0;
    int rc = 1;

    bench_prefix(prefix, sizeof prefix, "s");
    if (kiln_client_connect(a->url, &c) != KILN_OK ||
        kiln_nats_connect(a->url, "kiln-bench-info", 5000, &nc, &js) != KILN_OK) {
        fprintf(stderr, "bench: cannot connect to %s\n", a->url);
        goto out;
    }
    int64_t deadline = bench_now_us() + a->fill_deadline_ms * 1000;
    for (unsigned k = 0; k < a->nsizes; k++) {
        unsigned want = a->sizes[k];
        int64_t t0 = bench_now_us();
        unsigned added = want > have ? store_fill(c, prefix, have, want, deadline) : 0;
        int64_t tpub = bench_now_us();
        uint64_t applied = 0;
        int caught_up = 0;
        /* The stream holds only these jobs, in id order: the store's ack
         * floor is the number of jobs it has applied. */
        for (;;) {
            if (store_progress(js, &applied, &caught_up) != KILN_OK) {
                fprintf(stderr, "bench: cannot read the store durable's progress\n");
                goto out;
            }
            if (caught_up || bench_now_us() >= deadline) break;
            bench_sleep_until_us(bench_now_us() + STORE_POLL_US);
        }
        int64_t t1 = bench_now_us();
        unsigned size = applied < have + added ? (unsigned)applied : have + added;
        snprintf(extra, sizeof extra,
                 "target=%u published=%u publish_secs=%.3f complete=%s store_rss_mb=%.1f", want,
                 added, (tpub - t0) / 1e6, size >= want ? "yes" : "no",
                 bench_rss_mb_of(a->store_pid));
        bench_fig("kiln-store-fill", "fill", size - have, (t1 - t0) / 1e6, -1, -1, extra);
        have = size;
        if (want >= 1000000 && want % 1000000 == 0) snprintf(wl, sizeof wl, "store-%uM", want / 1000000);
        else if (want >= 1000 && want % 1000 == 0) snprintf(wl, sizeof wl, "store-%uk", want / 1000);
        else snprintf(wl, sizeof wl, "store-%u", want);
        /* As between run.sh's phases: the fill's flushes, compactions and
         * the server's stream writes finish before the GETs are timed. */
        bench_settle(15, 30000);
        store_gets(c, prefix, have, a->samples, wl, a->store_pid);
        if (size < want) {
            fprintf(stderr, "bench: store held %u of %u jobs at the fill deadline\n", size, want);
            goto out;
        }
    }
    rc = 0;
out:
    kiln_nats_close(nc, js);
    kiln_client_destroy(c);
    return rc;
}
