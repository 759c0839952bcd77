/* health.h - /healthz, /readyz, /metrics and the gateway's request metrics. */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <nats/nats.h>

#include "server.h"

kiln_status gw_health_init(natsConnection *nc);

/* One finished request (any thread). */
void gw_health_record(gw_route route, int status, int64_t us);
/* Submit latency from request start to the JetStream ack. */
void gw_health_submit_latency(double ms);

void gw_health_healthz(gw_req *r);
void gw_health_readyz(gw_req *r);
void gw_health_metrics(gw_req *r);

#endif
