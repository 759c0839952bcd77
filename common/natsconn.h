/* natsconn.h - the NATS connection every binary uses: reconnects forever,
 * sends as soon as possible (low latency), logs disconnects/reconnects. */
#ifndef KILN_NATSCONN_H
#define KILN_NATSCONN_H

#include <nats/nats.h>

#include "status.h"

/* Connects to the comma-separated server list `urls`, retrying the initial
 * connect too until `initial_timeout_ms` passes (0 = one try). The connection
 * then reconnects forever. On success *nc and *js (may be NULL if not wanted)
 * are set; the caller destroys them with kiln_nats_close(). */
kiln_status kiln_nats_connect(const char *urls, const char *name, int64_t initial_timeout_ms,
                              natsConnection **nc, jsCtx **js);

/* Same, with JetStream async-publish options (max pending and an ack handler). */
kiln_status kiln_nats_connect_async(const char *urls, const char *name, int64_t initial_timeout_ms,
                                    int64_t max_pending, jsPubAckHandler ack_handler,
                                    void *ack_closure, natsConnection **nc, jsCtx **js);

/* Destroys js then drains/closes and destroys nc. Accepts NULLs. */
void kiln_nats_close(natsConnection *nc, jsCtx *js);

/* Maps a natsStatus to a kiln_status (NATS_TIMEOUT -> KILN_ETIMEOUT,
 * no responders/not connected -> KILN_EUNAVAILABLE, else KILN_ENATS). */
kiln_status kiln_nats_status(natsStatus s);

#endif
