/* main.c - kiln-gateway: settings, wiring of the modules, signals. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "auth.h"
#include "config.h"
#include "gate.h"
#include "health.h"
#include "images.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "provision.h"
#include "query.h"
#include "ratelimit.h"
#include "resubmit.h"
#include "rpc.h"
#include "server.h"
#include "sse.h"
#include "submit.h"
#include "timers.h"
#include "waiter.h"

#define MAIN_NATS_CONNECT_MS 30000  /* initial connect retries before giving up */
#define MAIN_MAX_PENDING_PUBS 65536 /* async publishes awaiting their ack */
#define MAIN_SHUTDOWN_GRACE_MS 10000

typedef struct {
    char *nats_url;
    char *http_addr;
    char *api_keys;
    char *data_dir;
    char *log_level;
    int64_t threads;
    double submit_rate;
    int64_t submit_burst;
    int64_t store_timeout_ms;
    int64_t publish_timeout_ms;
    int64_t ack_wait_ms;
    int64_t dup_window_ms;
    int64_t wait_feed_linger_ms;
} main_settings;

int main(int argc, char **argv)
{
    /* Blocked first thing (before any thread exists), so a SIGTERM during
     * start-up waits for sigwait or the connect loop instead of killing. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    main_settings cfg = {0};
    const kiln_setting table[] = {
        {"KILN_NATS_URL", "nats-url", KILN_SET_NATS_URLS, "nats://127.0.0.1:4222", 1, 0,
         "NATS server(s), comma-separated", &cfg.nats_url},
        {"KILN_HTTP_ADDR", "http-addr", KILN_SET_LISTEN_ADDR, "127.0.0.1:8080", 1, 0,
         "HTTP listen address host:port", &cfg.http_addr},
        {"KILN_API_KEYS", "api-keys", KILN_SET_STRING, NULL, 1, 0,
         "API keys: token:user_id[,token:user_id...]", &cfg.api_keys},
        {"KILN_DATA_DIR", "data-dir", KILN_SET_STRING, "./var", 1, 0,
         "images are served from <dir>/images/<shard>/<id>.<index>.png", &cfg.data_dir},
        {"KILN_HTTP_THREADS", "http-threads", KILN_SET_INT, "2", 1, 256,
         "HTTP event-loop threads", &cfg.threads},
        {"KILN_SUBMIT_RATE", "submit-rate", KILN_SET_RATE, "0", 1, 0,
         "per-user submit limit, e.g. 20/s or 600/min; 0 = off", &cfg.submit_rate},
        {"KILN_SUBMIT_BURST", "submit-burst", KILN_SET_INT, "0", 0, 1000000,
         "per-user burst above the rate; 0 = one second's worth (at least 1)", &cfg.submit_burst},
        {"KILN_STORE_TIMEOUT", "store-timeout", KILN_SET_DURATION, "2s", 100, 60000,
         "how long a query waits for the store before 503", &cfg.store_timeout_ms},
        {"KILN_PUBLISH_TIMEOUT", "publish-timeout", KILN_SET_DURATION, "5s", 100, 60000,
         "how long a submit waits for the JetStream ack before 503", &cfg.publish_timeout_ms},
        {"KILN_ACK_WAIT", "ack-wait", KILN_SET_DURATION, "30s", 1000, 3600000,
         "JetStream AckWait of the worker durables (provisioning; same as the consumer's)",
         &cfg.ack_wait_ms},
        {"KILN_DUP_WINDOW", "dup-window", KILN_SET_DURATION, "30s", 1000, 86400000,
         "KILN_JOBS duplicate window for Nats-Msg-Id (Kiln itself also drops later copies)", &cfg.dup_window_ms},
        {"KILN_WAIT_FEED_LINGER", "wait-feed-linger", KILN_SET_DURATION, "30s", 100, 86400000,
         "jobs.done is received while ?wait is in use and this long after the last one",
         &cfg.wait_feed_linger_ms},
        {"KILN_LOG_LEVEL", "log-level", KILN_SET_STRING, "info", 1, 0, "debug, info, warn, error",
         &cfg.log_level},
    };
    char err[512];
    int rc = 1;
    natsConnection *nc = NULL, *fnc = NULL, *qnc = NULL, *sse_nc = NULL;
    jsCtx *js = NULL, *fjs = NULL, *sse_js = NULL;
    kiln_resubmit *resubmit = NULL; /* accepted submits checked after a reconnect */
    int server_started = 0, timers_started = 0, rpc_started = 0, waiter_started = 0;

    kiln_log_init("gateway");
    kiln_status st = kiln_config_load(table, sizeof table / sizeof table[0], argc, argv,
                                      "kiln-gateway",
                                      "Kiln HTTP/JSON API: validates and publishes jobs to "
                                      "JetStream, answers queries from the status store.",
                                      err, sizeof err);
    if (st == KILN_EHELP) return 0;
    if (st != KILN_OK) {
        fprintf(stderr, "kiln-gateway: %s\n", err);
        return 2;
    }
    if (kiln_log_set_level(cfg.log_level) != KILN_OK) {
        fprintf(stderr, "kiln-gateway: KILN_LOG_LEVEL must be debug, info, warn or error\n");
        return 2;
    }
    if (gw_auth_init(cfg.api_keys, err, sizeof err) != KILN_OK) {
        fprintf(stderr, "kiln-gateway: %s\n", err);
        return 2;
    }
    gw_server_opts so;
    memset(&so, 0, sizeof so);
    so.threads = (unsigned)cfg.threads;
    /* kiln_config_load checked the address (KILN_SET_LISTEN_ADDR); this
     * parse only fills the sockaddr, and fails only if the host stopped
     * resolving in between. */
    if (kiln_parse_listen_addr(cfg.http_addr, &so.addr, &so.addr_len) != KILN_OK) {
        fprintf(stderr, "kiln-gateway: KILN_HTTP_ADDR=%s: no longer resolves\n", cfg.http_addr);
        gw_auth_free();
        return 2;
    }
    if (gw_ratelimit_init(cfg.submit_rate, (long)cfg.submit_burst, gw_auth_count()) != KILN_OK) {
        fprintf(stderr, "kiln-gateway: out of memory\n");
        gw_auth_free();
        return 1;
    }

    /* Every SSE client holds a socket: use the whole hard limit of descriptors. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) LOG_WARN("cannot raise the descriptor limit");
    }

    /* Signals are taken by sigwait() here; every thread created later inherits the mask. */
    signal(SIGPIPE, SIG_IGN);
    kiln_nats_stop_on_signals(); /* SIGTERM while still connecting: exit at once */

    kiln_nats_opts no;
    kiln_nats_opts_init(&no);
    no.name = "kiln-gateway";
    no.initial_timeout_ms = MAIN_NATS_CONNECT_MS;
    no.max_pending = MAIN_MAX_PENDING_PUBS;
    no.ack_handler = gw_submit_ack_handler;
    st = kiln_resubmit_create(
        "kiln-resubmit",
        kiln_metric_counter("kiln_gateway_submits_rechecked_total",
                            "accepted submits looked up after a reconnect to NATS"),
        kiln_metric_counter(
            "kiln_gateway_submits_republished_total",
            "accepted submits published again because nats-server lost them after confirming them"),
        &resubmit);
    if (st != KILN_OK) goto out;
    no.ack_closure = resubmit;
    /* Submits go on two connections (submit.c picks by load): this one
     * without SendAsap, whose publishes libnats' flusher writes in batches
     * (less CPU per submit under load, ~1 ms later), and a SendAsap one that
     * writes each publish at once (low latency while few are in flight). */
    no.send_asap = false;
    st = kiln_nats_connect_opts(cfg.nats_url, &no, &nc, &js);
    if (st == KILN_OK) {
        no.name = "kiln-gateway-submit";
        no.send_asap = true;
        st = kiln_nats_connect_opts(cfg.nats_url, &no, &fnc, &fjs);
    }
    if (st != KILN_OK) goto out; /* natsconn logged why */
    kiln_provision_opts po;
    memset(&po, 0, sizeof po); /* fields opts_init leaves alone stay false/0 */
    kiln_provision_opts_init(&po);
    po.ack_wait_ms = cfg.ack_wait_ms;
    po.dup_window_ms = cfg.dup_window_ms;
    po.retry_for_ms = MAIN_NATS_CONNECT_MS;
    if ((st = kiln_provision(js, &po)) != KILN_OK) {
        if (st != KILN_ESTOPPED) LOG_ERROR("provisioning failed status=%s", kiln_status_str(st));
        goto out;
    }
    /* Event streams get their own connection whose subscriptions share
     * libnats' delivery thread pool: thousands of clients, few threads. */
    kiln_nats_opts so_sse;
    kiln_nats_opts_init(&so_sse);
    so_sse.name = "kiln-gateway-events";
    so_sse.initial_timeout_ms = MAIN_NATS_CONNECT_MS;
    so_sse.global_delivery = true;
    so_sse.js_wait_ms = cfg.store_timeout_ms;
    if ((st = kiln_nats_connect_opts(cfg.nats_url, &so_sse, &sse_nc, &sse_js)) != KILN_OK) goto out;
    /* Store queries and the jobs.done feed (every completion) on a connection
     * of their own, so their traffic does not queue behind the submit
     * publishes and acks on the connection's lock and reader thread. */
    if ((st = kiln_nats_connect(cfg.nats_url, "kiln-gateway-query", MAIN_NATS_CONNECT_MS, &qnc,
                                NULL)) != KILN_OK)
        goto out;
    if ((st = gw_health_init(nc)) != KILN_OK) goto out;
    if ((st = gw_timers_start()) != KILN_OK) goto out;
    timers_started = 1;
    if ((st = gw_rpc_init(qnc)) != KILN_OK) goto out;
    rpc_started = 1;
    if ((st = gw_waiter_init(qnc, cfg.wait_feed_linger_ms)) != KILN_OK) goto out;
    waiter_started = 1;
    if ((st = gw_submit_init((gw_submit_conn){nc, js}, (gw_submit_conn){fnc, fjs},
                             cfg.publish_timeout_ms, cfg.store_timeout_ms)) != KILN_OK)
        goto out;
    if ((st = kiln_resubmit_start(resubmit, js, qnc)) != KILN_OK) goto out;
    gw_query_init(cfg.store_timeout_ms);
    if ((st = gw_sse_init(sse_nc, sse_js, cfg.store_timeout_ms)) != KILN_OK) goto out;
    gw_images_init(cfg.data_dir, cfg.store_timeout_ms);
    if ((st = gw_server_start(&so)) != KILN_OK) {
        LOG_ERROR("cannot listen on HTTP address addr=%s", cfg.http_addr);
        goto out;
    }
    server_started = 1;
    LOG_INFO("gateway listening addr=%s threads=%u keys=%zu submit_rate=%.3f", cfg.http_addr,
             so.threads, gw_auth_count(), cfg.submit_rate);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    LOG_INFO("shutting down signal=%d", sig);
    rc = 0;
out:
    if (st == KILN_ESTOPPED) rc = 0; /* stopped while connecting */
    if (server_started) gw_server_quiesce();
    /* Event streams end now; their clients resume elsewhere with Last-Event-ID. */
    gw_sse_shutdown(server_started ? 2000 : 0);
    /* Waiters are answered now with the job's current state. */
    if (waiter_started) gw_waiter_shutdown();
    /* From here on requests on kept-alive connections get 503 without NATS;
     * what is in flight (acks, store replies) still completes. */
    gw_gate_close();
    if (server_started) gw_server_drain(MAIN_SHUTDOWN_GRACE_MS);
    if (rpc_started) gw_rpc_shutdown();
    kiln_resubmit_stop(resubmit);
    gw_submit_detach(); /* the ack sweep lets go of the connections closed next */
    kiln_nats_close(qnc, NULL);
    kiln_nats_close(fnc, fjs);
    kiln_nats_close(nc, js);
    /* No more acks can come: whatever still waits gets a 503. */
    gw_submit_fail_pending();
    if (server_started) gw_server_drain(1000);
    if (timers_started) gw_timers_stop();
    if (server_started) gw_server_stop();
    /* After the daemon: releasing a stream unsubscribes on this connection. */
    kiln_nats_close(sse_nc, sse_js);
    gw_submit_free();
    kiln_resubmit_destroy(resubmit); /* no submit acks come any more */
    gw_waiter_free();
    gw_ratelimit_free();
    gw_auth_free();
    if (rc == 0) LOG_INFO("gateway stopped");
    return rc;
}
