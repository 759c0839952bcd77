/* rpc.h - asynchronous NATS request/reply (to the store) without a blocked
 * thread: one wildcard reply subscription, a table of pending calls, and
 * timeouts from the timer thread. */
#ifndef GW_RPC_H
#define GW_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "kiln.pb-c.h"
#include "server.h"

/* Completion of a call, on a libnats or the timer thread. st is KILN_OK with
 * the reply (destroyed by rpc after the callback returns), KILN_ETIMEOUT, or
 * KILN_EUNAVAILABLE (no responders / shutting down) with reply NULL. */
typedef void (*gw_rpc_done)(gw_req *r, kiln_status st, natsMsg *reply);

kiln_status gw_rpc_init(natsConnection *nc);
/* Fails every pending call with KILN_EUNAVAILABLE and unsubscribes. */
void gw_rpc_shutdown(void);

/* Sends data to subject with a reply inbox. On KILN_OK done() is called
 * exactly once, never from inside this function; on error it is never called. */
kiln_status gw_rpc_call(const char *subject, const void *data, size_t len, int64_t timeout_ms,
                        gw_rpc_done done, gw_req *r);

/* Packs a StoreRequest and calls. */
kiln_status gw_rpc_store(const char *subject, const Kiln__V1__StoreRequest *req,
                         int64_t timeout_ms, gw_rpc_done done, gw_req *r);

/* Unpacks a StoreReply (KILN_PB_MAX_BYTES cap); NULL when malformed. */
Kiln__V1__StoreReply *gw_rpc_store_reply(natsMsg *reply);

#endif
