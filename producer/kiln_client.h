/* kiln_client.h - a small C client for Kiln over NATS, for services that
 * submit jobs and wait for them without going through the HTTP gateway.
 *
 *   kiln_client *c = NULL;
 *   if (kiln_client_connect("nats://127.0.0.1:4222", &c) != KILN_OK) ...
 *   kiln_job_spec spec; kiln_job_spec_init(&spec);
 *   spec.user_id = "svc-a"; spec.prompt = "a red fox in snow";
 *   char id[65];
 *   kiln_client_submit(c, &spec, id, sizeof id, NULL, 0); // durable when it returns OK
 *   Kiln__V1__JobStatus *st = NULL;
 *   kiln_client_wait(c, id, 60000, &st);                  // terminal state or KILN_ETIMEOUT
 *   kiln__v1__job_status__free_unpacked(st, NULL);
 *   kiln_client_destroy(c);
 *
 * Thread-safety: one kiln_client may be used from several threads. */
#ifndef KILN_CLIENT_H
#define KILN_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "lanepause.h"
#include "queuestats.h"
#include "status.h"

typedef struct kiln_client kiln_client;

typedef struct {
    const char *id;              /* NULL: the client makes a UUIDv7 */
    const char *user_id;         /* required */
    const char *prompt;          /* required */
    const char *model;           /* optional */
    unsigned n;                  /* 0 = 1 */
    const char *size;            /* optional "WxH" */
    Kiln__V1__Priority priority; /* default normal */
    int64_t not_before_ms;       /* 0 = now */
    unsigned timeout_s;          /* 0 = default */
    unsigned max_attempts;       /* 0 = default */
} kiln_job_spec;

void kiln_job_spec_init(kiln_job_spec *s);

/* Connects (comma-separated urls; reconnects forever once connected) and
 * makes sure Kiln's streams exist. *out is set only on success. While the
 * client stays connected, the submits JetStream confirmed in its last 0.5 s
 * of submitting before a reconnect are looked up afterwards and published
 * again if nats-server lost them (a crash of nats-server 2.9.10 can), on a
 * thread of the client's own. */
kiln_status kiln_client_connect(const char *urls, kiln_client **out);
void kiln_client_destroy(kiln_client *c); /* NULL-safe; flushes async submits */

/* Validates, publishes to the lane of spec->priority with Nats-Msg-Id = id and
 * waits for the JetStream ack. Writes the job id to id_out. On invalid input
 * returns KILN_EINVAL and, if err is given, a sentence naming the field. */
kiln_status kiln_client_submit(kiln_client *c, const kiln_job_spec *spec, char *id_out,
                               size_t id_out_len, char *err, size_t errlen);

/* Same without waiting for the ack (for bulk producers); call
 * kiln_client_flush() to wait for every outstanding ack. *failed counts
 * publishes JetStream did not acknowledge. */
kiln_status kiln_client_submit_async(kiln_client *c, const kiln_job_spec *spec, char *id_out,
                                     size_t id_out_len, char *err, size_t errlen);
kiln_status kiln_client_flush(kiln_client *c, int64_t timeout_ms, uint64_t *failed);
/* (flush details: timeout_ms <= 0 waits without limit; *failed counts the
 * failures since the previous flush; on KILN_ETIMEOUT the unacknowledged
 * publishes stay pending and a later flush waits for them again; when
 * publishes are unacknowledged and no ack at all came for 30 s, each of
 * them counts as failed (JetStream may still have stored one: submitting
 * it again with the same id is safe). submit_async blocks, up to 30 s,
 * while 16384 publishes are unacknowledged.) */

/* jobs.status: the job's current state. KILN_ENOTFOUND when the store does not
 * know it. Caller frees *out with kiln__v1__job_status__free_unpacked(). */
kiln_status kiln_client_get(kiln_client *c, const char *id, Kiln__V1__JobStatus **out);

/* Waits until the job is terminal (listens on jobs.done, and checks the
 * current state first so an already finished job returns at once).
 * KILN_ETIMEOUT after timeout_ms (< 0 = no limit); a job the store does not
 * know yet is waited for too. Caller frees *out as above. */
kiln_status kiln_client_wait(kiln_client *c, const char *id, int64_t timeout_ms,
                             Kiln__V1__JobStatus **out);

/* jobs.cancel: writes the reply's Kiln-Status (e.g. "cancelled",
 * "already_finished", "not_found") into status_out. */
kiln_status kiln_client_cancel(kiln_client *c, const char *id, char *status_out, size_t len);

/* A page of a user's jobs, newest first (kiln.store.list). Caller frees *out
 * with kiln__v1__store_reply__free_unpacked(). cursor may be NULL. */
kiln_status kiln_client_list(kiln_client *c, const char *user_id, unsigned limit,
                             const char *cursor, Kiln__V1__StoreReply **out);

/* Calls cb for every jobs.done event until cb returns non-zero or
 * timeout_ms passes (<0 = forever). */
typedef int (*kiln_client_done_cb)(const Kiln__V1__JobStatus *st, void *arg);
kiln_status kiln_client_watch(kiln_client *c, int64_t timeout_ms, kiln_client_done_cb cb, void *arg);

/* ---- Additions (beyond the first draft of this header) ------------------ */

/* Default time a request on jobs.status / jobs.cancel / kiln.store.list waits
 * for its reply, and time a synchronous submit waits for the JetStream ack. */
#define KILN_CLIENT_REQUEST_TIMEOUT_MS 5000

/* Builds, validates and packs the JobRequest that kiln_client_submit() would
 * publish, without touching NATS (submit calls it before any NATS call, so
 * invalid input never reaches the wire). created_at_ms is now. Writes the id
 * to id_out (needs 37 bytes for a generated id, strlen(spec->id)+1 otherwise).
 * *buf (malloc'ed, the caller free()s it) and *len are set only on success. */
kiln_status kiln_client_encode(const kiln_job_spec *spec, char *id_out, size_t id_out_len,
                               char *err, size_t errlen, uint8_t **buf, size_t *len);

/* Like kiln_client_watch(), but also returns KILN_OK within ~250 ms once
 * *stop becomes non-zero (e.g. set by a SIGINT handler). stop may be NULL. */
kiln_status kiln_client_watch_until(kiln_client *c, int64_t timeout_ms, kiln_client_done_cb cb,
                                    void *arg, const volatile sig_atomic_t *stop);

/* Formats one line "id=... status=... attempts=N created_at=... images=u1,u2
 * error=code:message" (images/error only when present; created_at=- when
 * unknown) into buf. Returns KILN_EINVAL if buf is too small (buf then holds
 * a truncated line). */
kiln_status kiln_client_format_status(const Kiln__V1__JobStatus *st, char *buf, size_t len);

/* ---- Dead letters: jobs.dead, stream KILN_DEAD (deadletters.c) ---------- */

/* One message of KILN_DEAD: a job that exhausted its attempts, an invalid
 * job, or bytes that were not a job at all. */
typedef struct {
    uint64_t seq;   /* its KILN_DEAD sequence: what retry and drop take */
    int64_t at_ms;  /* when it was dead-lettered */
    char *job_id;   /* Kiln-Job-Id, "" when unknown */
    char *reason;   /* Kiln-Reason, "" when none */
    uint8_t *data;  /* the original payload (a JobRequest when it decodes) */
    size_t len;
    char *lane;     /* Kiln-Lane: "high", "normal", "low"; "" for letters older than it */
} kiln_dead_letter;

/* Reads up to max letters (1-1000) with sequence >= from_seq, oldest first.
 * *next_seq is where the next page starts (0 when the stream was read to
 * its end). Free *out with kiln_dead_letters_free(out, n). */
kiln_status kiln_client_dead_list(kiln_client *c, uint64_t from_seq, size_t max,
                                  kiln_dead_letter **out, size_t *n, uint64_t *next_seq);
void kiln_dead_letters_free(kiln_dead_letter *letters, size_t n); /* NULL-safe */

/* The JobRequest a retry publishes for a dead letter's payload: the same
 * job under a new id, created now, to start now, without its
 * Idempotency-Key (the key names the failed job). KILN_EINVAL with a
 * sentence in err when the payload is not a valid JobRequest. *buf
 * (malloc'ed) and *blen and *priority only on success. */
kiln_status kiln_client_retry_encode(const void *data, size_t len, char *id_out,
                                     size_t id_out_len, char *err, size_t errlen, uint8_t **buf,
                                     size_t *blen, Kiln__V1__Priority *priority);

/* Submits dead letter seq's job again (kiln_client_retry_encode, header
 * Kiln-Retry-Of: <old id>) on the lane the letter's Kiln-Lane header names
 * (the payload's priority without one), waits for the JetStream ack, then removes the
 * letter. KILN_OK once the job is submitted; err then holds a warning when
 * the letter could not be removed (it is empty otherwise). KILN_ENOTFOUND
 * when there is no such letter. */
kiln_status kiln_client_dead_retry(kiln_client *c, uint64_t seq, char *id_out, size_t id_out_len,
                                   char *err, size_t errlen);

/* Removes dead letter seq from KILN_DEAD (KILN_ENOTFOUND when there is none). */
kiln_status kiln_client_dead_drop(kiln_client *c, uint64_t seq);

/* ---- Queue depths (stats.c) ----------------------------------------------- */

/* How many jobs wait in each priority lane, how many workers hold, how far
 * the store is behind and how many dead letters there are, from JetStream's
 * own accounting (common/queuestats.h). */
kiln_status kiln_client_stats(kiln_client *c, kiln_queue_stats *out);

/* Pauses a lane (KILN_LANE_*; reason NULL = "paused", at most
 * KILN_PAUSE_REASON_MAX bytes) or resumes it: consumers stop or start
 * fetching from it within about half a second (common/lanepause.h). */
kiln_status kiln_client_pause(kiln_client *c, int lane, int paused, const char *reason);

/* ---- Consumer processes (consumers.c) ------------------------------------ */

typedef struct {
    char id[320];             /* "<host>:<pid>:<8 random hex>" */
    int64_t started_at_ms;    /* unix ms */
    int64_t concurrency;      /* its KILN_CONCURRENCY */
    int64_t in_flight;        /* jobs holding a slot */
    char provider[16];        /* "ok", "paused" (a 429's Retry-After), "tripped" (breaker) */
    double provider_rate_per_s; /* its share of KILN_PROVIDER_RATE, 0 = no limit */
    bool lane_paused[KILN_LANES]; /* the lanes it sees paused */
    int64_t jobs_completed, jobs_failed, jobs_retried; /* since it started */
} kiln_consumer_info;

/* Asks every running consumer for its state (kiln.consumer.status, core
 * NATS): waits up to wait_ms for a first answer, then until 100 ms pass
 * without a new one (2 s at most in all). Fills out[0..*n), at most max,
 * sorted by id; *answered counts every answer that decoded (more than *n
 * when max was too small). KILN_OK also when none answers (*n = 0). */
kiln_status kiln_client_consumers(kiln_client *c, int64_t wait_ms, kiln_consumer_info *out,
                                  size_t max, size_t *n, size_t *answered);

#endif
