/* waiter.h - GET /v1/jobs/{id}?wait=N: suspended requests waiting for the
 * job's jobs.done event or their deadline, without a thread each. */
#ifndef GW_WAITER_H
#define GW_WAITER_H

#include <nats/nats.h>

#include "server.h"

#define GW_WAITER_MAX 100000 /* waiting requests; more are answered at once */

/* Waiters listen to jobs.done on nc, from the first park until linger_ms
 * after the last. */
kiln_status gw_waiter_init(natsConnection *nc, int64_t linger_ms);
/* Fires every waiter now (their answers are fetched), unsubscribes. */
void gw_waiter_shutdown(void);
void gw_waiter_free(void);

/* Parks suspended r until r->job_id is announced on jobs.done or
 * r->wait_deadline_ms passes; then calls gw_query_refetch(r). Returns an error
 * (r untouched) when it cannot park. */
kiln_status gw_waiter_park(gw_req *r);

#endif
