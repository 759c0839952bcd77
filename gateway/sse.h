/* sse.h - Server-Sent Events: GET /v1/events (every status change of the
 * caller's jobs) and GET /v1/jobs/{id}/events (one job, closed after its
 * terminal event), fed by an ordered JetStream consumer on KILN_EVENTS per
 * client, without a thread per client. A job's first event comes in its
 * user's EventBatch (store/events.h): per-user streams unpack those, a
 * per-job stream starts from the job's current state instead. */
#ifndef GW_SSE_H
#define GW_SSE_H

#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "kiln.pb-c.h"
#include "server.h"

#define GW_SSE_BUF_MAX (256 * 1024)   /* per client; a client that falls further behind is closed */
#define GW_SSE_KEEPALIVE_MS 15000     /* ": keep-alive" comment after this much silence */

/* nc must use libnats' global message delivery (many subscriptions, few
 * threads); js is its JetStream context. timeout_ms bounds the store and
 * stream look-ups made when a stream opens. */
kiln_status gw_sse_init(natsConnection *nc, jsCtx *js, int64_t timeout_ms);
/* Ends every open stream (clients may resume with Last-Event-ID) and waits
 * up to grace_ms for them to be closed; new streams get 503. */
void gw_sse_shutdown(int64_t grace_ms);
long gw_sse_count(void);

/* GET /v1/events; r->user is authenticated. Answers r (the stream or an error). */
void gw_sse_user(gw_req *r);
/* GET /v1/jobs/{id}/events; r->job_id is a valid id. */
void gw_sse_job(gw_req *r);

/* Helpers exposed for unit tests. */
/* Lower-case hex of user into out (>= 2*strlen(user)+1 bytes). */
void gw_sse_user_hex(const char *user, char *out, size_t outlen);
/* An event's position: its KILN_EVENTS sequence and, for a record of an
 * EventBatch, its 1-based index (0 for a single event), as seq << 12 | index.
 * Event ids show it as "<seq>" or "<seq>.<index>". */
#define GW_SSE_INDEX_BITS 12
#define GW_SSE_POS(seq, index) ((uint64_t)(seq) << GW_SSE_INDEX_BITS | (uint64_t)(index))
#define GW_SSE_SEQ(pos) ((pos) >> GW_SSE_INDEX_BITS)
#define GW_SSE_INDEX(pos) ((pos) & ((1u << GW_SSE_INDEX_BITS) - 1))

/* Parses a Last-Event-ID value ("<seq>" or "<seq>.<index>") into a
 * position; 0 on success. */
int gw_sse_parse_last_id(const char *s, uint64_t *out);
/* "event: job\nid: <id of pos>\ndata: <job json>\n\n" in a new malloc'ed
 * buffer; *terminal is set when the job is in a terminal state. NULL on out
 * of memory. */
char *gw_sse_format_event(const Kiln__V1__JobRecord *rec, uint64_t pos, size_t *len, int *terminal);

#endif
