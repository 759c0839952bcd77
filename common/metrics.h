/* metrics.h - process-wide counters, gauges and latency histograms rendered
 * in the Prometheus text format. Lock-free updates (atomics); registration
 * happens once at start-up, before threads run. */
#ifndef KILN_METRICS_H
#define KILN_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct kiln_metric kiln_metric;

/* Register a metric; name must be a static string like "kiln_jobs_submitted_total".
 * Returns NULL only when the registry (256 entries) is full. */
kiln_metric *kiln_metric_counter(const char *name, const char *help);
kiln_metric *kiln_metric_gauge(const char *name, const char *help);
/* A gauge in a family of one name told apart by labels, a static string in
 * the Prometheus form `lane="high"` (several: `a="x",b="y"`). The family is
 * rendered together, with one HELP (the first registered) and TYPE. */
kiln_metric *kiln_metric_gauge_labeled(const char *name, const char *labels, const char *help);
/* Histogram of milliseconds with fixed buckets 0.5,1,2,5,10,25,50,100,250,500,1000,2500,5000,10000,+Inf. */
kiln_metric *kiln_metric_histogram_ms(const char *name, const char *help);

void kiln_metric_add(kiln_metric *m, int64_t v);   /* counter or gauge; NULL-safe */
void kiln_metric_set(kiln_metric *m, int64_t v);   /* gauge */
int64_t kiln_metric_value(const kiln_metric *m);  /* counter or gauge; 0 for NULL */
void kiln_metric_observe_ms(kiln_metric *m, double ms);

/* Renders all metrics into a malloc'ed NUL-terminated string (caller frees). */
kiln_status kiln_metrics_render(char **out, size_t *len);

/* Optional: serves GET /metrics (and /healthz) on addr "host:port" with
 * libmicrohttpd, for binaries with no HTTP API of their own (consumer, store).
 * addr NULL or "" = off. kiln_metrics_http_stop() accepts being called when off. */
kiln_status kiln_metrics_http_start(const char *addr);
void kiln_metrics_http_stop(void);

/* Splits "host:port" (host may be empty = 0.0.0.0, or [v6]) into a sockaddr for
 * listeners; used by the gateway, dev provider and metrics listener. */
struct sockaddr_storage;
kiln_status kiln_parse_listen_addr(const char *addr, struct sockaddr_storage *out, size_t *outlen);

/* The port of a parsed listen address (host order). libmicrohttpd binds
 * MHD_OPTION_SOCK_ADDR, but names this port in its messages ("Failed to bind
 * to port 8080: ..."); an AF_INET6 address also needs MHD_USE_IPv6. */
uint16_t kiln_listen_addr_port(const struct sockaddr_storage *ss);

#endif
