/* limit.c - the raw libnats ceiling for `make bench`: W1 async-publishes N
 * ~200-byte jobs and waits for every ack; W2 publishes N jobs while pull
 * workers fetch them in batches, publish a done message per job and ack it.
 * No Kiln code: this is what any JetStream job system can reach here.
 *
 *   kiln-bench-limit --url nats://127.0.0.1:PORT [--jobs 100000] [--batch 256] [--fetchers 2]
 *                    [--only w1|w2]
 *
 * Prints one `FIG name=limit-W1 ...` and one `FIG name=limit-W2 ...` line
 * (only one of them with --only, so a caller can count the server's messages
 * of each workload apart). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#define LIMIT_JOB_BYTES 200
#define LIMIT_DONE_BYTES 100
#define LIMIT_MAX_JOBS 10000000u
#define LIMIT_MAX_FETCHERS 8
#define LIMIT_MAX_PENDING 8192
#define LIMIT_TIMEOUT_MS 120000

typedef struct {
    unsigned jobs;
    int batch;
    int fetchers;               /* pull subscriptions on one durable: fetches overlap processing */
    char uniq[48];
    char job_subj[96];
    char done_subj[96];
    char job_stream[64];
    char done_stream[64];
    int64_t *pub_us;            /* per job: publish time */
    int64_t *end_us;            /* per job: ack time (W1) or done-ack time (W2) */
    atomic_uint acked;          /* W1: job acks; W2: done acks */
    atomic_uint ack_errors;
    atomic_uint processed;      /* W2: jobs handled by the workers */
    atomic_bool stop;
    natsConnection *wnc;        /* W2 worker connection */
    jsCtx *wjs;
} limit_run;

static int64_t limit_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double limit_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double mb = 0;
    if (f == NULL) return 0;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long kb;
        if (sscanf(line, "VmHWM: %lu kB", &kb) == 1) mb = kb / 1024.0;
    }
    fclose(f);
    return mb;
}

static void limit_reset_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f == NULL) return;
    fputs("5", f); /* resets VmHWM to the current RSS */
    fclose(f);
}

static int limit_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Latency percentiles of end_us - pub_us over the jobs that have both. */
static void limit_percentiles(const limit_run *r, double *p50, double *p99)
{
    int64_t *d = malloc(sizeof *d * r->jobs);
    size_t n = 0;
    *p50 = *p99 = -1;
    if (d == NULL) return;
    for (unsigned i = 0; i < r->jobs; i++)
        if (r->end_us[i] > 0 && r->pub_us[i] > 0) d[n++] = r->end_us[i] - r->pub_us[i];
    if (n > 0) {
        qsort(d, n, sizeof *d, limit_cmp_i64);
        *p50 = d[(n - 1) * 50 / 100] / 1000.0;
        *p99 = d[(n - 1) * 99 / 100] / 1000.0;
    }
    free(d);
}

static void limit_print(const limit_run *r, const char *name, const char *wl, int64_t t0, int64_t t1)
{
    double secs = (t1 - t0) / 1e6, p50, p99;
    limit_percentiles(r, &p50, &p99);
    printf("FIG name=%s workload=%s jobs=%u secs=%.3f rate=%.0f p50_ms=%.3f p99_ms=%.3f "
           "rss_mb=%.1f errors=%u\n",
           name, wl, r->jobs, secs, secs > 0 ? r->jobs / secs : 0, p50, p99, limit_rss_mb(),
           atomic_load(&r->ack_errors));
    fflush(stdout);
}

/* The index a job or done payload starts with ("%010u "). */
static unsigned limit_index_of(natsMsg *m)
{
    const char *d = natsMsg_GetData(m);
    unsigned long v = 0;
    if (d != NULL && natsMsg_GetDataLength(m) >= 10) v = strtoul(d, NULL, 10);
    return (unsigned)v;
}

/* Called on a libnats thread for every publish ack of the context. */
static void limit_on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    limit_run *r = closure;
    (void)js;
    if (pa != NULL && pae == NULL) {
        unsigned i = limit_index_of(msg);
        if (i < r->jobs) r->end_us[i] = limit_now_us();
    } else {
        atomic_fetch_add(&r->ack_errors, 1);
    }
    atomic_fetch_add(&r->acked, 1);
    natsMsg_Destroy(msg);
}

/* W2's publisher: its acks are not what W2 measures, only failures count. */
static void limit_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    limit_run *r = closure;
    (void)js;
    if (pa == NULL || pae != NULL) atomic_fetch_add(&r->ack_errors, 1);
    natsMsg_Destroy(msg);
}

static natsStatus limit_connect(const char *url, jsPubAckHandler on_ack, limit_run *r,
                                natsConnection **nc, jsCtx **js)
{
    natsOptions *o = NULL;
    jsOptions jo;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK) s = natsOptions_SetURL(o, url);
    if (s == NATS_OK) s = natsOptions_SetIOBufSize(o, 256 * 1024);
    if (s == NATS_OK) s = natsConnection_Connect(nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) return s;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = LIMIT_MAX_PENDING;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = r;
    jo.PublishAsync.StallWait = 10000;
    return natsConnection_JetStream(js, *nc, &jo);
}

static natsStatus limit_add_stream(jsCtx *js, const char *name, const char *subj, jsRetentionPolicy ret)
{
    jsStreamConfig c;
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    const char *subjects[1] = {subj};
    natsStatus s;
    jsStreamConfig_Init(&c);
    c.Name = name;
    c.Subjects = subjects;
    c.SubjectsLen = 1;
    c.Retention = ret;
    c.Storage = js_FileStorage;
    c.Duplicates = (int64_t)120 * 1000000000; /* 2 min, like KILN_JOBS */
    s = js_AddStream(&si, js, &c, NULL, &je);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) fprintf(stderr, "limit: add stream %s: %s (%d)\n", name, natsStatus_GetText(s), (int)je);
    return s;
}

/* Publishes every job with a Nats-Msg-Id (as any de-duplicating job system must). */
static natsStatus limit_publish_all(limit_run *r, jsCtx *js)
{
    char payload[LIMIT_JOB_BYTES];
    char msgid[96];
    jsPubOptions po;
    natsStatus s = NATS_OK;
    memset(payload, 'x', sizeof payload);
    for (unsigned i = 0; i < r->jobs && s == NATS_OK; i++) {
        int n = snprintf(payload, sizeof payload, "%010u ", i);
        payload[n] = 'x';
        snprintf(msgid, sizeof msgid, "%s-%u", r->uniq, i);
        jsPubOptions_Init(&po);
        po.MsgId = msgid;
        r->pub_us[i] = limit_now_us();
        do {
            s = js_PublishAsync(js, r->job_subj, payload, (int)sizeof payload, &po);
        } while (s == NATS_TIMEOUT && !atomic_load(&r->stop)); /* stalled at MaxPending */
    }
    return s;
}

static natsStatus limit_wait_acks(limit_run *r, jsCtx *js)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = LIMIT_TIMEOUT_MS;
    natsStatus s = js_PublishAsyncComplete(js, &po);
    /* The ack handler may still be running for the last acks. */
    int64_t deadline = limit_now_us() + 5000000;
    while (atomic_load(&r->acked) < r->jobs && limit_now_us() < deadline) usleep(100);
    return s;
}

static natsStatus limit_w1(limit_run *r, const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode je = 0;
    natsStatus s = limit_connect(url, limit_on_ack, r, &nc, &js);
    if (s == NATS_OK) s = limit_add_stream(js, r->job_stream, r->job_subj, js_LimitsPolicy);
    int64_t t0 = limit_now_us();
    if (s == NATS_OK) s = limit_publish_all(r, js);
    if (s == NATS_OK) s = limit_wait_acks(r, js);
    int64_t t1 = limit_now_us();
    if (s == NATS_OK) limit_print(r, "limit-W1", "W1", t0, t1);
    if (js != NULL) js_DeleteStream(js, r->job_stream, NULL, &je);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s;
}

/* A W2 worker: fetch a batch, publish one done message per job, ack each. */
static void *limit_worker(void *arg)
{
    limit_run *r = arg;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode je = 0;
    natsStatus s;
    char done[LIMIT_DONE_BYTES];
    char msgid[96];
    jsSubOptions_Init(&so);
    so.Stream = r->job_stream;
    so.Config.Durable = "limit-worker";
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.MaxAckPending = 20000;
    so.Config.AckWait = (int64_t)30 * 1000000000;
    s = js_PullSubscribe(&sub, r->wjs, r->job_subj, "limit-worker", NULL, &so, &je);
    if (s != NATS_OK) {
        fprintf(stderr, "limit: pull subscribe: %s (%d)\n", natsStatus_GetText(s), (int)je);
        atomic_store(&r->stop, true);
        return NULL;
    }
    memset(done, 'd', sizeof done);
    while (!atomic_load(&r->stop) && atomic_load(&r->processed) < r->jobs) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, r->batch, 500, &je);
        if (s == NATS_TIMEOUT) continue;
        if (s != NATS_OK) {
            fprintf(stderr, "limit: fetch: %s (%d)\n", natsStatus_GetText(s), (int)je);
            atomic_store(&r->stop, true);
            break;
        }
        for (int k = 0; k < list.Count && s == NATS_OK; k++) {
            unsigned i = limit_index_of(list.Msgs[k]);
            jsPubOptions po;
            int n = snprintf(done, sizeof done, "%010u ", i);
            done[n] = 'd';
            snprintf(msgid, sizeof msgid, "%s-%u.done", r->uniq, i);
            jsPubOptions_Init(&po);
            po.MsgId = msgid;
            do {
                s = js_PublishAsync(r->wjs, r->done_subj, done, (int)sizeof done, &po);
            } while (s == NATS_TIMEOUT && !atomic_load(&r->stop));
            if (s == NATS_OK) s = natsMsg_Ack(list.Msgs[k], NULL);
            if (s == NATS_OK) atomic_fetch_add(&r->processed, 1);
        }
        natsMsgList_Destroy(&list);
        if (s != NATS_OK) {
            fprintf(stderr, "limit: worker: %s\n", natsStatus_GetText(s));
            atomic_store(&r->stop, true);
        }
    }
    natsSubscription_Destroy(sub);
    return NULL;
}

static natsStatus limit_w2(limit_run *r, const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode je = 0;
    pthread_t th[LIMIT_MAX_FETCHERS];
    int started = 0;
    natsStatus s = limit_connect(url, limit_on_pub_ack, r, &nc, &js);
    if (s == NATS_OK) s = limit_connect(url, limit_on_ack, r, &r->wnc, &r->wjs);
    /* Work-queue retention: a job is deleted on its ack, as in a job system. */
    if (s == NATS_OK) s = limit_add_stream(js, r->job_stream, r->job_subj, js_WorkQueuePolicy);
    if (s == NATS_OK) s = limit_add_stream(js, r->done_stream, r->done_subj, js_LimitsPolicy);
    /* Create the durable before the clock starts (Kiln provisions at start-up too). */
    if (s == NATS_OK) {
        jsConsumerConfig cc;
        jsConsumerInfo *ci = NULL;
        jsConsumerConfig_Init(&cc);
        cc.Durable = "limit-worker";
        cc.AckPolicy = js_AckExplicit;
        cc.MaxAckPending = 20000;
        cc.AckWait = (int64_t)30 * 1000000000;
        s = js_AddConsumer(&ci, js, r->job_stream, &cc, NULL, &je);
        jsConsumerInfo_Destroy(ci);
    }
    int64_t t0 = limit_now_us();
    for (; s == NATS_OK && started < r->fetchers; started++)
        if (pthread_create(&th[started], NULL, limit_worker, r) != 0) s = NATS_ERR;
    jsCtx *pubjs = js;
    if (s == NATS_OK) s = limit_publish_all(r, pubjs);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = LIMIT_TIMEOUT_MS;
        s = js_PublishAsyncComplete(pubjs, &po);
    }
    int64_t deadline = limit_now_us() + (int64_t)LIMIT_TIMEOUT_MS * 1000;
    while (s == NATS_OK && !atomic_load(&r->stop) && limit_now_us() < deadline &&
           atomic_load(&r->processed) < r->jobs)
        usleep(200);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = LIMIT_TIMEOUT_MS;
        s = js_PublishAsyncComplete(r->wjs, &po);
    }
    if (s == NATS_OK) s = natsConnection_FlushTimeout(r->wnc, 10000); /* the job acks are out */
    int64_t t1 = limit_now_us();
    atomic_store(&r->stop, true);
    for (int k = 0; k < started; k++) pthread_join(th[k], NULL);
    if (s == NATS_OK && atomic_load(&r->processed) < r->jobs) s = NATS_TIMEOUT;
    if (s == NATS_OK) limit_print(r, "limit-W2", "W2", t0, t1);
    if (js != NULL) {
        js_DeleteStream(js, r->job_stream, NULL, &je);
        js_DeleteStream(js, r->done_stream, NULL, &je);
    }
    jsCtx_Destroy(r->wjs);
    r->wjs = NULL;
    natsConnection_Destroy(r->wnc);
    r->wnc = NULL;
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return s;
}

/* Clears the per-run figures and names fresh subjects and streams. */
static void limit_reset(limit_run *r, const char *tag)
{
    memset(r->pub_us, 0, sizeof *r->pub_us * r->jobs);
    memset(r->end_us, 0, sizeof *r->end_us * r->jobs);
    atomic_store(&r->acked, 0);
    atomic_store(&r->ack_errors, 0);
    atomic_store(&r->processed, 0);
    atomic_store(&r->stop, false);
    snprintf(r->job_subj, sizeof r->job_subj, "limitbench.%s.%s.jobs", r->uniq, tag);
    snprintf(r->done_subj, sizeof r->done_subj, "limitbench.%s.%s.done", r->uniq, tag);
    snprintf(r->job_stream, sizeof r->job_stream, "LIMIT_%s_%s_JOBS", r->uniq, tag);
    snprintf(r->done_stream, sizeof r->done_stream, "LIMIT_%s_%s_DONE", r->uniq, tag);
}

static void limit_usage(void)
{
    fprintf(stderr, "usage: kiln-bench-limit --url NATS_URL [--jobs N] [--batch N] [--fetchers N] "
                    "[--only w1|w2]\n");
}

int main(int argc, char **argv)
{
    const char *url = NULL;
    const char *only = NULL;
    limit_run r;
    int rc = 1;
    natsStatus s;
    memset(&r, 0, sizeof r);
    r.jobs = 100000;
    r.batch = 256;
    r.fetchers = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) url = argv[++i];
        else if (strcmp(argv[i], "--jobs") == 0 && i + 1 < argc) r.jobs = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) r.batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--fetchers") == 0 && i + 1 < argc) r.fetchers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else {
            limit_usage();
            return 2;
        }
    }
    if (url == NULL || r.jobs == 0 || r.jobs > LIMIT_MAX_JOBS || r.batch < 1 || r.batch > 4096 ||
        r.fetchers < 1 || r.fetchers > LIMIT_MAX_FETCHERS ||
        (only != NULL && strcmp(only, "w1") != 0 && strcmp(only, "w2") != 0)) {
        limit_usage();
        return 2;
    }
    snprintf(r.uniq, sizeof r.uniq, "%ld%ld", (long)getpid(), (long)time(NULL));
    r.pub_us = calloc(r.jobs, sizeof *r.pub_us);
    r.end_us = calloc(r.jobs, sizeof *r.end_us);
    if (r.pub_us == NULL || r.end_us == NULL) goto out;

    if (only == NULL || strcmp(only, "w1") == 0) {
        limit_reset(&r, "w1");
        s = limit_w1(&r, url);
        if (s != NATS_OK) {
            fprintf(stderr, "limit: W1 failed: %s\n", natsStatus_GetText(s));
            goto out;
        }
    }
    if (only != NULL && strcmp(only, "w1") == 0) {
        rc = 0;
        goto out;
    }
    limit_reset(&r, "w2");
    limit_reset_rss();
    s = limit_w2(&r, url);
    if (s != NATS_OK) {
        fprintf(stderr, "limit: W2 failed: %s (processed %u of %u)\n", natsStatus_GetText(s),
                atomic_load(&r.processed), r.jobs);
        goto out;
    }
    rc = 0;
out:
    free(r.pub_us);
    free(r.end_us);
    nats_Close();
    return rc;
}
