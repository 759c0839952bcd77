/* query.h - job queries answered by the store over NATS: get (with ?wait),
 * list, viewed, cancel. */
#ifndef GW_QUERY_H
#define GW_QUERY_H

#include <stdint.h>

#include "server.h"

#define GW_WAIT_MAX_S 60

void gw_query_init(int64_t store_timeout_ms);

void gw_query_get(gw_req *r);
void gw_query_list(gw_req *r);
void gw_query_viewed(gw_req *r);
void gw_query_cancel(gw_req *r);

/* Fetches r->job_id again and answers r (r is suspended; used by waiters). */
void gw_query_refetch(gw_req *r);
/* Asks for r->job_id again as ?wait does the first time: answered when
 * terminal, else parked again (r is suspended; used by waiters). */
void gw_query_again(gw_req *r);

/* Maps a failed store call or a StoreReply error to the answer. */
void gw_query_answer_store_error(gw_req *r, kiln_status st, const char *code, const char *msg);

#endif
