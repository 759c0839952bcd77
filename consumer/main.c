/* main.c - kiln-consumer: settings, wiring of the modules, signals and the
 * SIGTERM drain. */
#include <curl/curl.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "cons.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "periodic.h"
#include "provision.h"

#define MAIN_CONNECT_TIMEOUT_MS 15000
/* After the drain: aborted calls handing their jobs back, results awaiting
 * their publish acks and the acks themselves share this one deadline, so a
 * SIGTERM stops within KILN_DRAIN_TIMEOUT and this even with NATS down. */
#define MAIN_AFTER_DRAIN_MS 5000
#define MAIN_XFER_DEFAULT_MAX 8 /* default transfer threads: online CPUs, at most this */

static cons_settings main_set;
/* KILN_TRANSFER_THREADS' default, filled from the CPU count before loading. */
static char main_xfer_default[16] = "1";

static const kiln_setting main_table[] = {
    {"KILN_NATS_URL", "nats-url", KILN_SET_NATS_URLS, "nats://127.0.0.1:4222", 1, 0,
     "NATS server(s), comma-separated", &main_set.nats_url},
    {"KILN_DATA_DIR", "data-dir", KILN_SET_STRING, "./var", 1, 0,
     "saved images are appended to <dir>/images/packs/<uuid7>.pack", &main_set.data_dir},
    {"KILN_CONCURRENCY", "concurrency", KILN_SET_INT, "16", 1, 4096,
     "max jobs in flight (provider calls) in this process", &main_set.concurrency},
    {"KILN_PROVIDER_URL", "provider-url", KILN_SET_STRING, "http://127.0.0.1:8090/v1", 1, 0,
     "provider base URL; jobs POST to <url>/images/generations", &main_set.provider_url},
    {"KILN_PROVIDER_KEY", "provider-key", KILN_SET_STRING, "", 1, 0,
     "provider bearer token (optional; never logged)", &main_set.provider_key},
    {"KILN_ACK_WAIT", "ack-wait", KILN_SET_DURATION, "30s", 1000, 3600000,
     "JetStream AckWait of the worker durables; in-progress acks every third of it",
     &main_set.ack_wait_ms},
    {"KILN_DUP_WINDOW", "dup-window", KILN_SET_DURATION, "30s", 1000, 86400000,
     "KILN_JOBS duplicate window for Nats-Msg-Id (Kiln itself also drops later copies)", &main_set.dup_window_ms},
    {"KILN_RETRY_BASE", "retry-base", KILN_SET_DURATION, "1s", 1, 3600000,
     "retry backoff base (exponential, full jitter)", &main_set.retry_base_ms},
    {"KILN_RETRY_CAP", "retry-cap", KILN_SET_DURATION, "60s", 1, 86400000,
     "retry backoff cap", &main_set.retry_cap_ms},
    {"KILN_DRAIN_TIMEOUT", "drain-timeout", KILN_SET_DURATION, "30s", 0, 3600000,
     "on SIGTERM, how long in-flight jobs may finish before they are handed back",
     &main_set.drain_timeout_ms},
    {"KILN_LOG_LEVEL", "log-level", KILN_SET_STRING, "info", 1, 0, "debug, info, warn, error",
     &main_set.log_level},
    {"KILN_METRICS_ADDR", "metrics-addr", KILN_SET_LISTEN_ADDR, "", 1, 0,
     "host:port for GET /metrics (empty = off)", &main_set.metrics_addr},
    {"KILN_MIN_AVAILABLE_MEM", "min-available-mem", KILN_SET_STRING, "0", 1, 0,
     "pause fetching while MemAvailable is below this, e.g. 64MB, 1GB (0 = off)",
     &main_set.min_available_mem},
    {"KILN_STALL_CHECK", "stall-check", KILN_SET_DURATION, "10s", 0, 3600000,
     "how often to look for job messages lost by a NATS restart and re-publish them (0 = off)",
     &main_set.stall_check_ms},
    {"KILN_TRANSFER_THREADS", "transfer-threads", KILN_SET_INT, main_xfer_default, 1, 16,
     "threads running provider calls and their results (default: online CPUs, at most 8)",
     &main_set.transfer_threads},
    {"KILN_RESULT_TTL", "result-ttl", KILN_SET_DURATION, "7d", 0, 3650LL * 24 * 3600 * 1000,
     "how long saved images are kept after their job ended (set it as on kiln-store); 0 = for ever",
     &main_set.result_ttl_ms},
    {"KILN_PROVIDER_RATE", "provider-rate", KILN_SET_RATE, "0", 1, 0,
     "most provider calls all running consumers start together, e.g. 50/min (each takes its "
     "concurrency's share); 0 = no limit",
     &main_set.provider_rate},
    {"KILN_PROVIDER_BURST", "provider-burst", KILN_SET_INT, "1", 1, 1000000,
     "provider calls that may start at once when KILN_PROVIDER_RATE allows", &main_set.provider_burst},
    {"KILN_PROVIDER_TRIP_AFTER", "provider-trip-after", KILN_SET_INT, "5", 0, 1000000,
     "provider calls in a row that found it unreachable or answering 502/503/504 before "
     "new calls stop (then one at a time until one is answered); 0 = off",
     &main_set.provider_trip_after},
};

static void main_fill_defaults(void)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1) cpus = 1;
    if (cpus > MAIN_XFER_DEFAULT_MAX) cpus = MAIN_XFER_DEFAULT_MAX;
    snprintf(main_xfer_default, sizeof main_xfer_default, "%ld", cpus);
}

/* Milliseconds until the monotonic time `until`, 0 once it passed. */
static int64_t main_ms_left(int64_t until)
{
    int64_t left = until - kiln_mono_ms();
    return left > 0 ? left : 0;
}

/* SIGTERM/SIGINT are blocked in every thread and taken by sigwait in main. */
static void main_wait_signal(const sigset_t *set)
{
    int sig = 0;
    while (sigwait(set, &sig) != 0) {
    }
    LOG_INFO("signal received signal=%s, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
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
    int rc = 1;
    char err[512] = "";
    kiln_status st = KILN_OK;
    kiln_provision_opts popts;
    bool curl_up = false, slots_up = false, reg_up = false, metrics_up = false;

    kiln_log_init("consumer");
    main_fill_defaults();
    st = kiln_config_load(main_table, sizeof main_table / sizeof main_table[0], argc, argv,
                          "kiln-consumer",
                          "Pulls Kiln jobs from JetStream and runs them against the image provider.",
                          err, sizeof err);
    if (st == KILN_EHELP) return 0;
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-consumer: %s\n", err);
        return 2;
    }
    if (kiln_log_set_level(main_set.log_level) != KILN_OK) {
        fprintf(stderr, "kiln-consumer: KILN_LOG_LEVEL=%s: must be debug, info, warn or error\n",
                main_set.log_level);
        return 2;
    }
    if (main_set.retry_cap_ms < main_set.retry_base_ms) {
        fprintf(stderr, "kiln-consumer: KILN_RETRY_CAP must not be below KILN_RETRY_BASE\n");
        return 2;
    }
    if (strncmp(main_set.provider_url, "http://", 7) != 0 &&
        strncmp(main_set.provider_url, "https://", 8) != 0) {
        fprintf(stderr, "kiln-consumer: KILN_PROVIDER_URL=%s: must start with http:// or https://\n",
                main_set.provider_url);
        return 2;
    }
    st = cons_memwatch_init(main_set.min_available_mem);
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-consumer: KILN_MIN_AVAILABLE_MEM=%s: %s\n", main_set.min_available_mem,
                st == KILN_EINVAL ? "must be a size like 0, 512MB or 2GB"
                                  : "cannot read MemAvailable from /proc/meminfo");
        return 2;
    }
    cons_g.set = &main_set;
    atomic_init(&cons_g.stopping, false);

    kiln_nats_stop_on_signals(); /* SIGTERM while still connecting: exit at once */
    signal(SIGPIPE, SIG_IGN);

    cons_ctx_register_metrics();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        LOG_ERROR("curl init failed");
        goto out;
    }
    curl_up = true;
    if (cons_slots_init(main_set.concurrency) != KILN_OK) goto out;
    slots_up = true;
    cons_gate_setup();
    if (cons_registry_init(main_set.concurrency) != KILN_OK) goto out;
    reg_up = true;
    if (main_set.metrics_addr[0] != '\0') {
        if (kiln_metrics_http_start(main_set.metrics_addr) != KILN_OK) goto out; /* it logged why */
        metrics_up = true;
    }

    if (cons_txcheck_init() != KILN_OK) goto out;
    st = kiln_nats_connect_async(main_set.nats_url, "kiln-consumer", MAIN_CONNECT_TIMEOUT_MS,
                                 4 * main_set.concurrency + 256, cons_publish_ack_handler, NULL,
                                 &cons_g.nc, &cons_g.js);
    if (st != KILN_OK) goto out;
    kiln_nats_opts ack_opts;
    kiln_nats_opts_init(&ack_opts);
    ack_opts.name = "kiln-consumer-acks";
    ack_opts.initial_timeout_ms = MAIN_CONNECT_TIMEOUT_MS;
    ack_opts.send_asap = false;
    st = kiln_nats_connect_opts(main_set.nats_url, &ack_opts, &cons_g.ack_nc, NULL);
    if (st != KILN_OK) goto out;
    kiln_provision_opts_init(&popts);
    popts.ack_wait_ms = main_set.ack_wait_ms;
    popts.dup_window_ms = main_set.dup_window_ms;
    popts.update_existing = true; /* the consumer owns AckWait */
    popts.retry_for_ms = MAIN_CONNECT_TIMEOUT_MS;
    st = kiln_provision(cons_g.js, &popts);
    if (st != KILN_OK) goto out;
    if (cons_transfers_start() != KILN_OK) goto out;
    if (cons_cancel_start() != KILN_OK) goto out;
    if (cons_pause_start() != KILN_OK) goto out;
    /* Before the fetcher: the first calls already go at this process's
     * share of KILN_PROVIDER_RATE. */
    if (cons_status_start() != KILN_OK) goto out;
    if (cons_peers_start() != KILN_OK) goto out;
    if (cons_gatenews_start() != KILN_OK) goto out;
    if (cons_fetcher_start() != KILN_OK) goto out;
    if (cons_stall_start() != KILN_OK) goto out;
    if (cons_retention_start() != KILN_OK) goto out;
    if (cons_txcheck_start() != KILN_OK) goto out;
    LOG_INFO("consumer ready concurrency=%lld transfer_threads=%lld provider=%s data_dir=%s "
             "ack_wait_ms=%lld provider_rate_per_s=%g provider_trip_after=%lld",
             (long long)main_set.concurrency, (long long)main_set.transfer_threads,
             main_set.provider_url, main_set.data_dir, (long long)main_set.ack_wait_ms,
             main_set.provider_rate, (long long)main_set.provider_trip_after);

    main_wait_signal(&sigs);
    rc = 0;

out:
    if (st == KILN_ESTOPPED) rc = 0; /* stopped while connecting */
    /* Drain: stop fetching, let in-flight jobs finish, hand back the rest.
     * The drain timeout counts from here. Every periodic thread (stall
     * check, image retention, lane pauses, rate share) is told to stop now
     * and joined only after the drain, as a round of theirs can be blocked
     * for seconds in a NATS call when NATS is down. */
    int64_t drain_until = kiln_mono_ms() + main_set.drain_timeout_ms;
    atomic_store(&cons_g.stopping, true);
    kiln_periodic_stop_all_soon();
    cons_fetcher_stop();
    if (slots_up && !cons_slots_wait_idle(main_ms_left(drain_until))) {
        LOG_WARN("drain timeout, handing back jobs in_flight=%lld", (long long)cons_slots_used());
        cons_transfers_abort_all();
    }
    int64_t until = kiln_mono_ms() + MAIN_AFTER_DRAIN_MS;
    if (slots_up) (void)cons_slots_wait_idle(MAIN_AFTER_DRAIN_MS);
    int64_t ack_wait = main_ms_left(until);
    if (cons_g.js != NULL && ack_wait > 0) {
        /* Read once: a MaxWait of 0 would mean "wait forever" to nats.c. */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = ack_wait;
        if (js_PublishAsyncComplete(cons_g.js, &po) != NATS_OK)
            LOG_WARN("some publish acks did not arrive before exit");
    }
    if (slots_up && !cons_slots_wait_idle(main_ms_left(until)))
        LOG_WARN("exiting with jobs unfinished in_flight=%lld (redelivered after ack wait)",
                 (long long)cons_slots_used());
    cons_stall_stop();
    cons_retention_stop();
    /* The checks a reconnect left share the 5 s after the drain (README:
     * "at most 5 s more"); with NATS down all that time they could not run. */
    cons_txcheck_stop(main_ms_left(until));
    cons_pause_stop();
    cons_gatenews_stop();
    cons_peers_stop();
    cons_status_stop();
    cons_cancel_stop();
    cons_transfers_stop();
    cons_image_close();
    kiln_nats_close(cons_g.nc, cons_g.js);
    cons_g.nc = NULL;
    cons_g.js = NULL;
    /* After nc: its publish-ack handlers may still have acked jobs; this
     * flushes those acks out. */
    kiln_nats_close(cons_g.ack_nc, NULL);
    cons_g.ack_nc = NULL;
    cons_txcheck_free(); /* no publish acks come any more */
    if (metrics_up) kiln_metrics_http_stop();
    cons_gate_teardown();
    if (reg_up) cons_registry_destroy();
    if (slots_up) cons_slots_destroy();
    if (curl_up) curl_global_cleanup();
    nats_Close();
    LOG_INFO("consumer stopped rc=%d", rc);
    return rc;
}
