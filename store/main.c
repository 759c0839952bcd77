/* main.c - kiln-store: settings, wiring of the store's modules, signals. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "barrier.h"
#include "config.h"
#include "db.h"
#include "done.h"
#include "donecheck.h"
#include "events.h"
#include "ingest.h"
#include "keys.h"
#include "log.h"
#include "periodic.h"
#include "metrics.h"
#include "natsconn.h"
#include "provision.h"
#include "queries.h"
#include "queuegauges.h"
#include "resync.h"
#include "retention.h"
#include "sweep.h"

#define STORE_CONNECT_TIMEOUT_MS 30000
#define STORE_DONE_MAX_PENDING 4096 /* jobs.done and event publishes awaiting their ack */
/* The apply loop's connection: one batch's publishes (≤ 2 per message,
 * batches of 1024 and rarely up to 3 batches' worth, see ingest.c). */
#define STORE_APPLY_MAX_PENDING 16384
/* Confirmed jobs.done and events kept to check after a reconnect
 * (donecheck.c): those of the last 0.5 s of publishing (the losses seen
 * were of the last ~40 ms), at most 16384 (~2-3 MB at W2's rate). */
#define STORE_DONECHECK_KEEP_MS 500
#define STORE_DONECHECK_CAP 16384

typedef struct {
    char *nats_url;
    char *data_dir;
    char *log_level;
    char *metrics_addr;
    int64_t ack_wait_ms;
    int64_t dup_window_ms;
    int64_t idem_ttl_ms;
    int64_t sweep_interval_ms;
    int64_t durable_check_ms;
    int64_t result_ttl_ms;
    int64_t queue_stats_ms;
    int64_t cache_mb;
} store_settings;

/* mkdir -p for the data directory. */
static kiln_status store_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return KILN_EINVAL;
    for (char *p = buf + 1; *p != '\0'; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return KILN_EIO;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return KILN_EIO;
    return KILN_OK;
}

int main(int argc, char **argv)
{
    /* Blocked first thing (before any thread exists), so a SIGTERM during
     * start-up waits for sigwait or the connect loop instead of killing. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    store_settings cfg = {0};
    const kiln_setting table[] = {
        {"KILN_NATS_URL", "nats-url", KILN_SET_NATS_URLS, "nats://127.0.0.1:4222", 1, 0,
         "NATS server(s), comma-separated", &cfg.nats_url},
        {"KILN_DATA_DIR", "data-dir", KILN_SET_STRING, "./var", 1, 0,
         "data directory; RocksDB lives in <dir>/store", &cfg.data_dir},
        {"KILN_LOG_LEVEL", "log-level", KILN_SET_STRING, "info", 1, 0,
         "debug, info, warn or error", &cfg.log_level},
        {"KILN_METRICS_ADDR", "metrics-addr", KILN_SET_LISTEN_ADDR, "", 1, 0,
         "host:port for GET /metrics; empty = off", &cfg.metrics_addr},
        {"KILN_ACK_WAIT", "ack-wait", KILN_SET_DURATION, "30s", 1000, 3600000,
         "AckWait of the worker durables (provisioned by every binary)", &cfg.ack_wait_ms},
        {"KILN_DUP_WINDOW", "dup-window", KILN_SET_DURATION, "30s", 1000, 86400000,
         "KILN_JOBS duplicate window for Nats-Msg-Id (Kiln itself also drops later copies)", &cfg.dup_window_ms},
        {"KILN_IDEM_TTL", "idem-ttl", KILN_SET_DURATION, "48h", 24LL * 3600 * 1000,
         30LL * 24 * 3600 * 1000, "how long Idempotency-Keys are honoured (at least 24h)",
         &cfg.idem_ttl_ms},
        {"KILN_SWEEP_INTERVAL", "sweep-interval", KILN_SET_DURATION, "30s", 0, 24LL * 3600 * 1000,
         "how often pending jobs whose JobRequest vanished from KILN_JOBS are re-published; 0 = off",
         &cfg.sweep_interval_ms},
        {"KILN_DURABLE_CHECK", "durable-check", KILN_SET_DURATION, "2s", 0, 3600LL * 1000,
         "how often the store checks that its durable has not passed over messages it never "
         "delivered (and re-creates it if so); 0 = off",
         &cfg.durable_check_ms},
        {"KILN_RESULT_TTL", "result-ttl", KILN_SET_DURATION, "7d", 0, 3650LL * 24 * 3600 * 1000,
         "how long a finished job's record is kept after it ended (a job with an "
         "Idempotency-Key at least until the key expires); 0 = for ever",
         &cfg.result_ttl_ms},
        {"KILN_QUEUE_STATS_INTERVAL", "queue-stats-interval", KILN_SET_DURATION, "5s", 0,
         3600LL * 1000,
         "how often the queue-depth gauges on /metrics are read from JetStream; 0 = off",
         &cfg.queue_stats_ms},
        {"KILN_STORE_CACHE_MB", "store-cache-mb", KILN_SET_INT, "256", 8, 65536,
         "RocksDB block cache in MiB (status reads stay in memory while the hot jobs fit)",
         &cfg.cache_mb},
    };
    char err[512] = "";
    char path[PATH_MAX];
    int rc = 1;
    db_store *db = NULL;
    natsConnection *nc = NULL, *anc = NULL;
    jsCtx *js = NULL, *ajs = NULL;
    barrier *b = NULL;
    ingest *ing = NULL;
    queries *q = NULL;
    sweep *sw = NULL;
    resync *rs = NULL;
    donecheck *dc = NULL;
    retention *ret = NULL;
    queuegauges *qg = NULL;

    kiln_log_init("store");
    kiln_status st = kiln_config_load(table, sizeof table / sizeof table[0], argc, argv,
                                      "kiln-store",
                                      "Kiln status store: applies KILN_JOBS to RocksDB, answers "
                                      "queries, publishes jobs.done.",
                                      err, sizeof err);
    if (st == KILN_EHELP) return 0;
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-store: %s\n", err);
        return 2;
    }
    if (kiln_log_set_level(cfg.log_level) != 0) {
        fprintf(stderr, "kiln-store: KILN_LOG_LEVEL must be debug, info, warn or error\n");
        return 2;
    }

    /* Signals are taken by sigwait() in this thread only; every thread
     * started from here on (ours and nats.c's) inherits the blocked mask. */
    signal(SIGPIPE, SIG_IGN);
    kiln_nats_stop_on_signals(); /* SIGTERM while still connecting: exit at once */

    if (snprintf(path, sizeof path, "%s/store", cfg.data_dir) >= (int)sizeof path) {
        fprintf(stderr, "kiln-store: KILN_DATA_DIR is too long\n");
        return 2;
    }
    if (store_mkdirs(cfg.data_dir) != KILN_OK) {
        LOG_ERROR("cannot create data dir path=%s err=\"%s\"", cfg.data_dir, strerror(errno));
        goto out;
    }
    if (db_open(path, cfg.idem_ttl_ms, (size_t)cfg.cache_mb << 20, &db) != KILN_OK) goto out;
    db->result_ttl_ms = cfg.result_ttl_ms;

    uint64_t applied = 0;
    if (db_get_u64(db, NULL, DB_CF_META, DB_META_APPLIED_SEQ, strlen(DB_META_APPLIED_SEQ),
                   &applied) != KILN_OK)
        goto out;

    st = kiln_nats_connect_async(cfg.nats_url, "kiln-store", STORE_CONNECT_TIMEOUT_MS,
                                 STORE_DONE_MAX_PENDING, done_on_pub_ack, NULL, &nc, &js);
    if (st != KILN_OK) goto out;
    kiln_provision_opts po;
    kiln_provision_opts_init(&po);
    po.ack_wait_ms = cfg.ack_wait_ms;
    po.dup_window_ms = cfg.dup_window_ms;
    po.retry_for_ms = STORE_CONNECT_TIMEOUT_MS;
    st = kiln_provision(js, &po);
    if (st != KILN_OK) {
        if (st != KILN_ESTOPPED) LOG_ERROR("provisioning failed status=%s", kiln_status_str(st));
        goto out;
    }

    /* The apply loop publishes and acks on its own connection without
     * SendAsap: libnats' flusher then writes them in large chunks instead of
     * one syscall each. Its fetch requests go on the SendAsap connection
     * (with the queries): buffered, each would wait for the flusher's 1 ms
     * pause before the server saw it (ingest.c). */
    kiln_nats_opts ao;
    kiln_nats_opts_init(&ao);
    ao.name = "kiln-store-apply";
    ao.initial_timeout_ms = STORE_CONNECT_TIMEOUT_MS;
    ao.send_asap = false;
    ao.max_pending = STORE_APPLY_MAX_PENDING;
    ao.ack_handler = done_on_pub_ack;
    if (donecheck_create(STORE_DONECHECK_KEEP_MS, STORE_DONECHECK_CAP, &dc) != KILN_OK) goto out;
    ao.ack_closure = dc;
    st = kiln_nats_connect_opts(cfg.nats_url, &ao, &anc, &ajs);
    if (st != KILN_OK) goto out;

    events_set_max_payload(natsConnection_GetMaxPayload(anc));
    if (barrier_create(js, applied, &b) != KILN_OK) goto out;
    if (queries_start(db, b, nc, js, &q) != KILN_OK) goto out;
    if (ingest_start(db, nc, anc, ajs, b, &ing) != KILN_OK) goto out;
    if (sweep_start(db, b, js, cfg.sweep_interval_ms, &sw) != KILN_OK) goto out;
    if (resync_start(b, js, cfg.durable_check_ms, &rs) != KILN_OK) goto out;
    if (donecheck_start(dc, db, nc, js) != KILN_OK) goto out;
    if (retention_start(db, cfg.result_ttl_ms, &ret) != KILN_OK) goto out;
    if (queuegauges_start(nc, js, cfg.queue_stats_ms, &qg) != KILN_OK) goto out;
    if (kiln_metrics_http_start(cfg.metrics_addr) != KILN_OK) goto out; /* it logged why */
    LOG_INFO("ready data=%s applied_seq=%llu metrics=%s", path,
             (unsigned long long)applied, cfg.metrics_addr[0] ? cfg.metrics_addr : "off");

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    LOG_INFO("shutting down signal=%d", sig);
    rc = 0;
out:
    if (st == KILN_ESTOPPED) rc = 0; /* stopped while connecting */
    /* The sweep first (it waits on the apply loop), then requests (they
     * write too), then the apply loop finishes its batch, then NATS, then
     * RocksDB. The apply loop is told first, and the queue gauges are joined
     * last, so that the loop's wind-down, the requests' drain and a
     * queue-depth read in flight (each up to 5 s with NATS down) overlap. */
    kiln_periodic_stop_all_soon(); /* sweep, durable check, retention, gauges: joined below */
    /* The requests' drain (up to 5 s with NATS down) runs beside the steps
     * below, the donecheck's wait for NATS (5 s) above all: one after the
     * other they took a store past 10 s (chaos run 3327). */
    queries_stop_soon(q);
    sweep_stop(sw);
    resync_stop(rs);
    donecheck_stop(dc);
    ingest_stop_soon(ing);
    retention_stop(ret);
    queries_stop(q);
    queuegauges_stop(qg);
    ingest_stop(ing);
    kiln_metrics_http_stop();
    kiln_nats_close(anc, ajs);
    kiln_nats_close(nc, js);
    donecheck_destroy(dc); /* the apply connection's acks no longer come */
    (void)done_republish_refused(NULL); /* refusals that came in after the apply loop ended */
    barrier_destroy(b);
    db_close(db);
    if (rc == 0) LOG_INFO("stopped");
    return rc;
}
