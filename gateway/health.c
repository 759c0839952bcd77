/* health.c - /healthz, /readyz, /metrics and the gateway's request metrics.
 *
 * The common registry has no labels, so the per-route request counters are
 * kept here and rendered with route/class labels after the common metrics. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "errors.h"
#include "gate.h"
#include "health.h"
#include "submit.h"
#include "metrics.h"
#include "rpc.h"
#include "server.h"
#include "sse.h"
#include "subjects.h"

#define HEALTH_PING_TIMEOUT_MS 1000
#define HEALTH_CLASSES 5 /* 1xx..5xx */

static const char *const health_route_names[GW_ROUTE_COUNT] = {
    [GW_ROUTE_NONE] = "unknown", [GW_ROUTE_HEALTHZ] = "healthz", [GW_ROUTE_READYZ] = "readyz",
    [GW_ROUTE_METRICS] = "metrics", [GW_ROUTE_SUBMIT] = "submit", [GW_ROUTE_LIST] = "list",
    [GW_ROUTE_GET] = "get", [GW_ROUTE_CANCEL] = "cancel", [GW_ROUTE_VIEWED] = "viewed",
    [GW_ROUTE_IMAGE] = "image", [GW_ROUTE_EVENTS] = "events",
};

static atomic_uint_fast64_t health_requests[GW_ROUTE_COUNT][HEALTH_CLASSES];
static kiln_metric *health_m_latency, *health_m_accepted, *health_m_unavailable,
    *health_m_rate_limited, *health_m_suspended, *health_m_streams, *health_m_unacked;
static natsConnection *health_nc;

kiln_status gw_health_init(natsConnection *nc)
{
    health_nc = nc;
    health_m_latency = kiln_metric_histogram_ms(
        "kiln_gateway_submit_latency_ms", "POST /v1/jobs from request start to the JetStream ack");
    health_m_accepted = kiln_metric_counter("kiln_gateway_jobs_accepted_total",
                                            "jobs answered 202 (durable in JetStream)");
    health_m_unavailable = kiln_metric_counter("kiln_gateway_unavailable_total",
                                               "requests answered 503");
    health_m_rate_limited = kiln_metric_counter("kiln_gateway_rate_limited_total",
                                                "requests answered 429");
    health_m_suspended = kiln_metric_gauge("kiln_gateway_waiting_requests",
                                           "requests waiting for NATS or the store");
    health_m_streams = kiln_metric_gauge("kiln_gateway_event_streams", "open SSE event streams");
    health_m_unacked = kiln_metric_gauge(
        "kiln_gateway_submits_unacked",
        "submit publishes JetStream has not acknowledged (nor been given up on) yet");
    return KILN_OK;
}

void gw_health_record(gw_route route, int status, int64_t us)
{
    (void)us;
    if ((int)route < 0 || route >= GW_ROUTE_COUNT) route = GW_ROUTE_NONE;
    int cls = status / 100 - 1;
    if (cls < 0 || cls >= HEALTH_CLASSES) cls = HEALTH_CLASSES - 1;
    atomic_fetch_add_explicit(&health_requests[route][cls], 1, memory_order_relaxed);
    if (status == 202) kiln_metric_add(health_m_accepted, 1);
    else if (status == 503) kiln_metric_add(health_m_unavailable, 1);
    else if (status == 429) kiln_metric_add(health_m_rate_limited, 1);
}

void gw_health_submit_latency(double ms) { kiln_metric_observe_ms(health_m_latency, ms); }

static void health_status_body(gw_req *r, int status, const char *s)
{
    gw_answer_json(&r->ans, status, json_pack("{s:s}", "status", s));
}

void gw_health_healthz(gw_req *r) { health_status_body(r, 200, "ok"); }

static void health_ping_done(gw_req *r, kiln_status st, natsMsg *reply)
{
    (void)reply;
    if (st == KILN_OK) health_status_body(r, 200, "ready");
    else gw_answer_error(&r->ans, "unavailable", "the status store does not answer", NULL);
    gw_server_resume(r);
}

void gw_health_readyz(gw_req *r)
{
    int connected = 0;
    if (gw_gate_enter()) {
        connected = health_nc != NULL &&
                    natsConnection_Status(health_nc) == NATS_CONN_STATUS_CONNECTED;
        gw_gate_leave();
    }
    if (!connected) {
        gw_answer_error(&r->ans, "unavailable", "NATS is not connected", NULL);
        return;
    }
    gw_server_suspend(r);
    kiln_status st = gw_rpc_call(KILN_SUBJ_STORE_PING, "", 0, HEALTH_PING_TIMEOUT_MS,
                                 health_ping_done, r);
    if (st != KILN_OK) {
        gw_answer_error(&r->ans, "unavailable", "the status store does not answer", NULL);
        gw_server_resume(r);
    }
}

void gw_health_metrics(gw_req *r)
{
    char *common = NULL, *out = NULL;
    size_t clen = 0;
    kiln_metric_set(health_m_suspended, gw_server_suspended_count());
    kiln_metric_set(health_m_streams, gw_sse_count());
    kiln_metric_set(health_m_unacked, gw_submit_unacked());
    if (kiln_metrics_render(&common, &clen) != KILN_OK) {
        gw_answer_error(&r->ans, "unavailable", "metrics are unavailable", NULL);
        return;
    }
    size_t cap = clen + 256 + (size_t)GW_ROUTE_COUNT * HEALTH_CLASSES * 96;
    out = malloc(cap);
    if (out == NULL) {
        free(common);
        gw_answer_error(&r->ans, "unavailable", "out of memory", NULL);
        return;
    }
    size_t n = 0;
    memcpy(out, common, clen);
    n = clen;
    n += (size_t)snprintf(out + n, cap - n,
                          "# HELP kiln_gateway_requests_total HTTP requests by route and status class\n"
                          "# TYPE kiln_gateway_requests_total counter\n");
    for (int rt = 0; rt < GW_ROUTE_COUNT; rt++) {
        for (int c = 0; c < HEALTH_CLASSES; c++) {
            uint64_t v = atomic_load_explicit(&health_requests[rt][c], memory_order_relaxed);
            if (v == 0) continue;
            n += (size_t)snprintf(out + n, cap - n,
                                  "kiln_gateway_requests_total{route=\"%s\",class=\"%dxx\"} %" PRIu64 "\n",
                                  health_route_names[rt], c + 1, v);
        }
    }
    free(common);
    gw_answer_raw(&r->ans, 200, "text/plain; version=0.0.4; charset=utf-8", out, n);
}
