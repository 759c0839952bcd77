/* cons.h - the consumer's internal modules and the job object they share.
 *
 * Threads (see main.c):
 *   fetch      fetcher.c: pulls jobs, store check, decides, hands runnable jobs on
 *   transfers  transfers.c: KILN_TRANSFER_THREADS workers ("kiln-xfer-<i>"),
 *              each with its own libcurl multi handle, run the provider calls
 *              and their results, and abort cancelled calls; worker 0 also
 *              sends in-progress acks and sweeps stuck publishes
 *   libnats    publish.c's ack handler and cancel.c's subscription run here
 *   main       settings, wiring, signals, drain
 *
 * A job is owned by exactly one thread at a time: the fetch thread until it is
 * handed to a transfer thread (or finished), that transfer thread while its
 * call runs and its result is processed, then whichever thread receives its publish acks. The registry
 * (registry.c) only lets other threads find a job to send in-progress acks or
 * set its cancel flag, under the registry mutex. */
#ifndef KILN_CONS_H
#define KILN_CONS_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bucket.h"
#include "imagepath.h"
#include "jobreq.h"
#include "kiln.pb-c.h"
#include "metrics.h"
#include "pull.h"
#include "status.h"

#define CONS_MAX_IMAGES KILN_N_MAX
#define CONS_ERR_MSG_MAX 512     /* provider error messages kept per job */
#define CONS_REASON_MAX 600      /* Kiln-Reason header value */
#define CONS_RESPONSE_MAX (64 * 1024 * 1024) /* provider response body cap */
#define CONS_URL_MAX 4096        /* image URL passed through from the provider */
#define CONS_FETCH_MAX 256       /* largest fetch batch */
/* A provider call still running after this long is announced as PROCESSING;
 * quicker ones go straight to their result (which carries started_at_ms). */
#define CONS_PROCESSING_AFTER_MS 250
#define CONS_SUMMARY_EVERY_MS 10000 /* INFO summary of per-job outcomes */

/* Settings, filled once by main.c and read-only afterwards. */
typedef struct {
    char *nats_url;
    char *data_dir;
    int64_t concurrency;
    char *provider_url;
    char *provider_key;
    int64_t ack_wait_ms;
    int64_t dup_window_ms;
    int64_t retry_base_ms;
    int64_t retry_cap_ms;
    int64_t drain_timeout_ms;
    char *log_level;
    char *metrics_addr;
    char *min_available_mem; /* KILN_MIN_AVAILABLE_MEM text, parsed by memwatch.c */
    int64_t stall_check_ms;  /* KILN_STALL_CHECK: stall.c interval, 0 = off */
    int64_t transfer_threads; /* KILN_TRANSFER_THREADS: transfers.c workers */
    int64_t result_ttl_ms;    /* KILN_RESULT_TTL: retention.c, 0 = keep images for ever */
    double provider_rate;     /* KILN_PROVIDER_RATE: calls started per second, 0 = no limit */
    int64_t provider_burst;   /* KILN_PROVIDER_BURST */
    int64_t provider_trip_after; /* KILN_PROVIDER_TRIP_AFTER: gate.c breaker, 0 = off */
} cons_settings;

/* Process-wide context shared by the modules (set up by main.c). */
typedef struct {
    const cons_settings *set;
    natsConnection *nc;
    jsCtx *js;
    /* Acks of job messages (+ACK, -NAK, +WPI, +TERM) go on a connection
     * without SendAsap: libnats' flusher writes what gathered in one write
     * (~1 ms later) instead of a write per ack, and no ack is on a job's
     * path to jobs.done. */
    natsConnection *ack_nc;
    atomic_bool stopping;   /* SIGTERM: stop fetching */
    kiln_metric *m_completed, *m_failed, *m_retried, *m_cancelled, *m_dead, *m_skipped,
        *m_duplicates, *m_mem_paused, *m_in_flight, *m_provider_ms, *m_redelivered,
        *m_idle_polls, *m_tx_batches, *m_tx_batched, *m_gate_waiting, *m_gate_tripped,
        *m_gate_rate_pauses, *m_gate_trips, *m_gate_handbacks, *m_gate_peer_pauses, *m_peer_holds,
        *m_store_waits, *m_resent;
} cons_ctx;

/* Defined in ctx.c; main.c fills it before any thread starts. Metric pointers
 * are NULL until cons_ctx_register_metrics() (kiln_metric_* accept NULL). */
extern cons_ctx cons_g;
void cons_ctx_register_metrics(void);

/* ---- job state machine (job.c) ---- */

typedef enum {
    CONS_JOB_FETCHED = 0, /* message received, slot held */
    CONS_JOB_CHECKED,     /* store check applied, attempt known */
    CONS_JOB_RUNNING,     /* provider call in a transfer thread */
    CONS_JOB_PUBLISHING,  /* result publishes in flight, waiting for JetStream acks */
    CONS_JOB_ACKED,       /* final: message acked */
    CONS_JOB_NAKED,       /* final: message nak'd with a delay (retry, not yet due, drain) */
    CONS_JOB_TERMINATED,  /* final: message Term'd (dead-lettered invalid input) */
    CONS_JOB_ABANDONED,   /* final: a publish failed; left unacked for redelivery */
} cons_job_state;

typedef enum { CONS_FINAL_ACK = 0, CONS_FINAL_NAK, CONS_FINAL_TERM } cons_final;

typedef enum { CONS_STEP_TX = 0, CONS_STEP_DEAD } cons_step;

typedef struct {
    char *url;            /* owned */
    uint64_t size_bytes;  /* 0 for pass-through URLs */
    char pack[KILN_PACK_NAME_MAX]; /* a saved image: its pack ("" for a pass-through URL) */
    uint64_t offset;      /* and where in it */
} cons_image;

typedef struct cons_job cons_job;
struct cons_job {
    cons_job_state state;
    natsMsg *msg;                 /* the original job message; owned */
    Kiln__V1__JobRequest *req;    /* decoded request or NULL; owned */
    char id[KILN_ID_MAX_LEN + 1]; /* "" when unreadable */
    uint64_t num_delivered;
    uint64_t stream_seq;
    uint64_t redrive_of;          /* Kiln-Redrive header (stall.c re-drive), 0 = none */
    const char *lane;             /* "high", "normal", "low" */
    unsigned attempt;             /* provider attempt number, 1-based (0: never started) */
    unsigned max_attempts;

    /* Outcome, decided once, then carried out by job.c's publish chain. */
    Kiln__V1__JobState tx_state;  /* transition to publish; UNSPECIFIED = none */
    char err_code[48];
    char err_msg[CONS_ERR_MSG_MAX];
    int64_t retry_at_ms;
    cons_image images[CONS_MAX_IMAGES];
    size_t n_images;
    char dead_reason[CONS_REASON_MAX]; /* "" = no dead letter */
    cons_step steps[2];
    int n_steps, step;
    unsigned resent;              /* publishes of this job sent again after a reconnect lost their ack */
    cons_final final;
    int64_t nak_delay_ms;
    bool truncate_prompt;         /* invalid request: transition carries a shortened prompt */

    /* Publish-ack tracking (registry.c, under its mutex). */
    natsMsg *pending_pub;         /* the published message we wait an ack for */
    int64_t pub_deadline_mono;
    int64_t pub_since_mono;       /* when it was tracked */
    cons_job *pub_next;           /* hash bucket chain */
    cons_job *seq_next;           /* stream-sequence bucket chain */
    cons_job *reg_prev, *reg_next;/* registry list */
    bool in_registry;

    /* Provider call (its transfer thread only). */
    void *easy;                   /* CURL * */
    char *req_body;
    char *resp;
    size_t resp_len, resp_cap;
    bool resp_too_large;
    bool never_connected;         /* the call ended before the request was sent */
    int64_t retry_after_ms;       /* Retry-After, or retry-after-ms (which wins); 0 = none */
    int64_t ratelimit_reset_ms;   /* x-ratelimit-reset-requests; 0 = none */
    bool retry_after_exact;       /* retry_after_ms came from retry-after-ms */
    char provider_code[40];       /* the failed answer's error.code ("" = none) */
    int64_t started_mono;
    int64_t started_at_ms;        /* wall clock when the attempt began; 0 = not started */
    bool processing_sent;         /* PROCESSING published for this attempt */
    uint64_t gate_probe_trip;     /* a probe of this breaker trip (gate.c); 0 = none */
    atomic_bool cancel;           /* set by the cancel subscription */
    cons_job *next;               /* transfer hand-off queue / running list */
};

/* Creates a job for a fetched message (takes ownership of msg) and decodes it. */
kiln_status cons_job_create(natsMsg *msg, const char *lane, cons_job **out);
/* Store facts for a job; known=false when the store did not answer or does not know the id. */
typedef struct {
    bool answered;   /* the store replied to the batch's check */
    bool known;      /* the store has a record for this id */
    Kiln__V1__JobState state;
    unsigned attempts;
    uint64_t request_seq; /* KILN_JOBS sequence of the copy that created the record; 0 = unknown */
    bool abandoned;  /* processing for longer than an attempt can run (kiln_jobrec_abandoned) */
    int64_t retry_at_ms; /* pending after a failed attempt: when the next became due; 0 = none */
    bool synced;     /* a sync check the store answered after applying all it held */
} cons_store_info;
/* storecheck.c: one request to the store on subject (body may be NULL with
 * len 0) and its StoreReply in *out (free with
 * kiln__v1__store_reply__free_unpacked): KILN_OK, a NATS status when nothing
 * answered, KILN_EUNAVAILABLE when the answer does not decode. The reply's
 * error_code is left to the caller. */
kiln_status cons_store_ask(const char *subject, const void *body, size_t len, int64_t timeout_ms,
                           Kiln__V1__StoreReply **out);
/* storecheck.c: one kiln.store.check for ids (NULL/empty entries are
 * skipped); fills info[i] for each. With sync the store first applies all it
 * holds. Returns KILN_OK when the store answered; info[i].answered says so per id. */
kiln_status cons_store_check(const char *const *ids, size_t n, bool sync, int64_t timeout_ms,
                             cons_store_info *info);
/* txcheck.c: confirmed kiln.tx publishes kept and, after a reconnect to
 * NATS, published again when nats-server lost them. init before the main
 * connection (its ack handler calls keep), start once it is up, stop before
 * it closes (stop also finishes, for up to finish_ms, the checks a
 * reconnect just before the stop left), free after. */
kiln_status cons_txcheck_init(void);
void cons_txcheck_keep(natsMsg *msg, uint64_t seq); /* ack handler; msg stays the caller's */
kiln_status cons_txcheck_start(void);
void cons_txcheck_stop(int64_t finish_ms); /* finish_ms: see kiln_pubcheck_stop */
void cons_txcheck_free(void);
/* Fills info[i] (zeroed by the caller) from rep, the store's check reply for ids. */
void cons_store_match(const char *const *ids, size_t n, const Kiln__V1__StoreReply *rep,
                      cons_store_info *info);
/* Fetch thread: decides what to do with a checked job (skip, nak, invalid, run). */
void cons_job_dispatch(cons_job *j, const cons_store_info *si);
/* Transfer thread: the provider call ended; classify and carry out the outcome. */
void cons_job_transfer_done(cons_job *j, int curl_code, long http_status);
/* Publishes PROCESSING once per attempt: from the transfer thread when the
 * call has run CONS_PROCESSING_AFTER_MS, or from dispatch before a
 * redelivered job's call (so a crash during it still counts the attempt). */
void cons_job_send_processing(cons_job *j);
/* Logs one INFO line with the outcomes counted since the last one, when there
 * were any and CONS_SUMMARY_EVERY_MS passed (any thread; transfer worker 0). */
void cons_job_log_summary(int64_t now_mono);
/* Transfer thread: the job was cancelled while in flight here. */
void cons_job_cancelled(cons_job *j);
/* Transfer thread (drain timeout): hand the job back with nak(0), no transition. */
void cons_job_hand_back(cons_job *j);
/* Ack-handler thread: the publish of the current step was acked (ok) or failed. */
void cons_job_published(cons_job *j, bool ok, const char *err);
/* Transfer thread: a publish ack never came; give the job up for redelivery. */
void cons_job_abandon(cons_job *j, const char *why);
#define CONS_RESEND_MAX 3 /* publishes of one job sent again after reconnects, then it is abandoned */
/* Overdue sweep: j's publish went out before a reconnect and its ack went
 * with the old connection. Publishes the current step again (same
 * Nats-Msg-Id: the stream keeps one copy if the first was stored) instead
 * of abandoning j, whose provider call would then run again; abandons j
 * after CONS_RESEND_MAX such losses. */
void cons_job_resend(cons_job *j);
/* Fetch thread: j (not in the registry) is a redelivery of a job whose call
 * still runs here; frees it without an ack and counts it as a duplicate. */
void cons_job_leave_to_running(cons_job *j);
/* Fetch thread: j (in the registry) is a copy of a message another consumer
 * holds (fetched, held back or running), or another job here does (when
 * nats-server delivered it again with its count reset); removes and frees
 * it without an ack, as cons_job_leave_to_running: the holder's ack, nak or
 * in-progress acks name the same stream sequence. */
void cons_job_leave_to_peer(cons_job *j);
/* Fetch thread: logs and counts that j waits hold_ms for a consumer that
 * may still run its call but did not answer (peers.c). The fetcher keeps j
 * meanwhile, unacked, in the registry (whose in-progress acks keep it from
 * redelivery): no transition, no attempt used. */
void cons_job_hold_for_peer(const cons_job *j, int64_t hold_ms);
/* Could an earlier delivery of j still be running in another consumer, and
 * what to do if no consumer says so (fetcher.c asks them, peers.c). */
typedef enum {
    CONS_ASK_NONE,    /* no: run it */
    CONS_ASK_ONLY,    /* perhaps: ask, and run it if nobody runs it */
    CONS_ASK_OR_HOLD, /* a call began: ask, and hold it back once if nobody answers */
} cons_ask_rule;
/* CONS_ASK_OR_HOLD for a redelivery whose record says a call began
 * (PROCESSING, not yet abandoned); a first delivery counts as a redelivery
 * when the store's record of that very message says a call began or failed
 * (nats-server 2.9 can deliver a message again with NumDelivered 1).
 * For one whose record is pending (CONS_ASK_ONLY), or that the store could
 * not tell about (CONS_ASK_OR_HOLD), only when it comes about AckWait after
 * the job became due (created, not_before, or the retry time the store
 * knows): only then can nats-server have given up on a live call whose
 * PROCESSING the store has not seen; clocks of other hosts and
 * nats-server's whole-second timestamps get a margin. A copy this consumer
 * handed back untried is never asked about (untried). A first delivery of a
 * re-drive (Kiln-Redrive) of a pending job's own message is asked about
 * that message (CONS_ASK_ONLY, cons_job_ask_seq): nats-server can lose a
 * message while another consumer holds a copy back (chaos run 3110). */
cons_ask_rule cons_job_ask_rule(const cons_job *j, const cons_store_info *si, bool untried,
                                int64_t now_ms, int64_t ack_wait_ms);
/* The stream sequence other consumers are asked about for j: the original
 * message's for a first delivery of a re-drive, j's own otherwise. */
uint64_t cons_job_ask_seq(const cons_job *j);
/* Whether a first delivery that comes during a burst of redeliveries, or
 * just after a reconnect to NATS, is asked about too (as CONS_ASK_ONLY):
 * nats-server 2.9 can hand the newest new message out a second time, with
 * NumDelivered 1, right after a failed redelivery (design.md), and a
 * restarted one can deliver again a message it had delivered, while its
 * first copy runs elsewhere with nothing recorded yet. Not when the store
 * says the job is over. */
bool cons_job_ask_in_burst(const cons_job *j, const cons_store_info *si, bool untried);
const char *cons_job_state_name(cons_job_state s);
/* The state machine's allowed moves, in one place (exposed for tests). */
bool cons_job_move_ok(cons_job_state from, cons_job_state to);
/* A first delivery whose stream sequence is not the one that created the
 * store's record: a second copy of the id published after the duplicate window. */
bool cons_job_is_duplicate_copy(const cons_job *j, const cons_store_info *si);

/* ---- slots.c: bounded in-flight accounting ---- */
kiln_status cons_slots_init(int64_t n);
void cons_slots_destroy(void);
/* Waits up to timeout_ms until at least want slots are free; returns the free
 * count then (fewer than want, possibly 0, on timeout). */
int64_t cons_slots_wait_free(int64_t want, int64_t timeout_ms);
void cons_slots_take(int64_t n);
void cons_slots_release(int64_t n);
int64_t cons_slots_used(void);
/* Waits until no slot is used; true when idle, false on timeout. */
bool cons_slots_wait_idle(int64_t timeout_ms);

/* ---- registry.c: in-flight jobs, and published message -> job ---- */
kiln_status cons_registry_init(int64_t concurrency);
void cons_registry_destroy(void);
/* Adds j, unless a copy of its message (same stream sequence) is still in
 * flight here: then false, and j is not added. Such a copy is a
 * redelivery whose in-progress acks came late, or a copy nats-server 2.9
 * delivered again with its count back at 1. */
bool cons_registry_add(cons_job *j);
void cons_registry_remove(cons_job *j);
/* Marks every in-flight job with this id cancelled; returns how many. */
int cons_registry_cancel(const char *id);
/* Sends natsMsg_InProgress for every in-flight job. */
void cons_registry_keepalive(void);
/* Of the n stream sequences, copies to held those this process has a job
 * of (fetched, held back for a peer, running or publishing its result),
 * counting a re-drive as a copy of its original message too, and sends
 * each such job an in-progress ack at once; returns how many (peers.c
 * answers another consumer with them). */
size_t cons_registry_held_seqs(const uint64_t *seqs, size_t n, uint64_t *held);
/* Remembers that the n jobs wait for the ack of m (before publishing m; a
 * TransitionBatch is one m for many jobs). One lock for all n. */
/* Runs fn(arg) under the registry's lock when no job waits for a publish
 * ack, and returns its result (0 when it did not run). A publish a job will
 * wait for is tracked before it goes out, so fn sees only publishes nobody
 * waits for. */
int cons_registry_with_no_pub_waiting(int (*fn)(void *arg), void *arg);
void cons_registry_track_pub(cons_job *const *jobs, size_t n, natsMsg *m,
                             int64_t deadline_mono);
/* Forgets the pending publish of the n jobs (the publish call itself failed). */
void cons_registry_untrack_pub(cons_job *const *jobs, size_t n);
/* Takes up to max jobs that waited for m into out and forgets the links;
 * returns how many. */
size_t cons_registry_take_pub(natsMsg *m, cons_job **out, size_t max);
/* Takes up to max jobs off their publish: those whose ack is overdue, and
 * (lost[i] true) those whose publish was tracked before lost_before_mono (a
 * reconnect since: its ack can be gone with the old connection). They stay
 * in the registry (their in-progress acks go on) and are the caller's: it
 * abandons the overdue ones and sends the lost ones again. Returns the count. */
size_t cons_registry_take_overdue(int64_t now_mono, int64_t lost_before_mono, cons_job **out,
                                  bool *lost, size_t max);

/* ---- publish.c: transitions on kiln.tx and the JetStream ack handler ---- */
/* Publishes j's transition (state st). track: wait for the ack and continue j's chain. */
kiln_status cons_publish_transition(cons_job *j, Kiln__V1__JobState st, bool track);
/* Between these two, this thread's tracked transitions are collected and
 * published at the end as one TransitionBatch (a transfer round). */
void cons_publish_batch_begin(void);
void cons_publish_batch_end(void);
void cons_publish_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                              void *closure);
/* Every async publish on cons_g.js goes through here: the n jobs (none for
 * an untracked publish) wait for the ack of *m for 10 s (publish.c),
 * then the overdue sweep gives them up. On KILN_OK nats.c owns the message
 * and *m is NULL; otherwise the caller still owns it. */
kiln_status cons_publish_async(cons_job *const *jobs, size_t n, natsMsg **m, const char *msg_id);
/* Takes back from nats.c the publishes whose ack nobody waits for any more
 * (an ack that never comes would otherwise stay counted for good; the
 * transfer thread's overdue sweep calls it). */
void cons_publish_drop_stale(void);

/* ---- deadletter.c ---- */
/* Copies j's original payload to jobs.dead with Kiln-Reason (tracked). */
kiln_status cons_deadletter_publish(cons_job *j);

/* ---- retry.c ---- */
int64_t cons_retry_delay_ms(unsigned attempt, int64_t base_ms, int64_t cap_ms, int64_t min_ms);

/* ---- answer.c ---- */
/* One item of a provider answer's data[]: its b64_json and url strings
 * (NUL-terminated copies; NULL when absent). */
typedef struct {
    char *b64;
    size_t b64_len;
    char *url;
    size_t url_len;
} cons_answer_item;
typedef struct {
    bool has_data;  /* the top-level "data" is an array */
    size_t n_items; /* its items; the first CONS_MAX_IMAGES are kept */
    cons_answer_item items[CONS_MAX_IMAGES];
    char *error_message; /* error.message, or "error" as a string; NULL if none */
    char *error_code;    /* error.code when a string (OpenAI: "insufficient_quota", ...) */
} cons_answer;
/* Parses a provider answer strictly (UTF-8, one JSON value, nothing after it).
 * KILN_EINVAL: not JSON. On success free *out with cons_answer_free. */
kiln_status cons_answer_parse(const char *body, size_t len, cons_answer *out);
void cons_answer_free(cons_answer *a);

/* ---- provider_openai.c ---- */
/* Builds the request body for j (malloc'ed JSON string in *body). */
kiln_status openai_build_request(const Kiln__V1__JobRequest *req, char **body);
typedef enum { OPENAI_OK = 0, OPENAI_RETRY, OPENAI_FATAL } openai_verdict;
/* Classifies a finished call and, on success, saves/collects the images into j.
 * On failure fills j->err_code/err_msg, j->provider_code, and on a 429 without
 * Retry-After sets j->retry_after_ms from j->ratelimit_reset_ms (capped at
 * KILN_RETRY_CAP). */
openai_verdict openai_handle_result(cons_job *j, int curl_code, long http_status,
                                    const char *data_dir);
/* Parses a Retry-After header value (seconds) into ms; -1 when absent/unparseable. */
int64_t openai_parse_retry_after(const char *value, size_t len);
/* Azure OpenAI's retry-after-ms (milliseconds); -1 when unparseable. */
int64_t openai_parse_retry_after_ms(const char *value, size_t len);
/* OpenAI's x-ratelimit-reset-requests, a Go duration ("1s", "6m0s",
 * "20ms"), into ms (at most an hour); -1 when unparseable. */
int64_t openai_parse_reset(const char *value, size_t len);

/* ---- gate.c: when provider calls may start (429 pauses, rate, breaker) ---- */
typedef enum {
    CONS_CALL_OK = 0,       /* images */
    CONS_CALL_ANSWERED,     /* another HTTP answer (400, 500, ...): the provider is up */
    CONS_CALL_RATE_LIMITED, /* 429 */
    CONS_CALL_UNAVAILABLE,  /* unreachable, or 502/503/504 */
    CONS_CALL_NO_CREDIT,    /* OpenAI's 429 insufficient_quota: unavailable for the
                             * breaker; a 429 pause when the breaker is off */
    CONS_CALL_OTHER,        /* a timeout or another transfer error: says nothing */
} cons_call_outcome;
typedef enum {
    CONS_GATE_SAME = 0,
    CONS_GATE_RATE_PAUSE,   /* a 429 closed the open gate */
    CONS_GATE_TRIPPED,      /* the breaker tripped */
    CONS_GATE_PROBE_FAILED, /* a call made while tripped found it still down */
    CONS_GATE_RECOVERED,    /* an answer while tripped (a 429 pauses too) */
} cons_gate_change;
typedef struct {
    double rate_per_s; /* 0 = no limit */
    double burst;      /* 0 = one second's worth, at least 1 */
    int trip_after;    /* 0 = no breaker */
    int64_t cap_ms;    /* longest pause (KILN_RETRY_CAP) */
} cons_gate_config;
typedef struct {
    pthread_mutex_t mu;
    kiln_bucket rate;
    int trip_after;
    int64_t cap_ms;
    int64_t closed_until_us; /* kiln_mono_us(): no call starts before */
    int64_t held_until_us;   /* another consumer's tripped breaker holds calls back until (0: none) */
    bool hold_lapsed;        /* such a hold ran out unended and tripped the breaker (not yet logged) */
    int unavailable_run;     /* CONS_CALL_UNAVAILABLE outcomes in a row */
    bool tripped;            /* one call at a time until one is answered */
    uint64_t trips;          /* times tripped; a probe belongs to one trip */
    int probes_out;          /* probes of the current trip still running */
    int64_t cooldown_ms;     /* the breaker's next pause */
    /* Gauges, written under mu so they never disagree with the state (NULL: none). */
    kiln_metric *waiting_gauge, *tripped_gauge;
} cons_gate;
/* The state machine (any cons_gate; times are kiln_mono_us()). */
void cons_gate_init(cons_gate *g, const cons_gate_config *cfg, int64_t now_us);
void cons_gate_destroy(cons_gate *g);
/* How many calls may start now; when none, *wait_ms (>= 1) says when to ask
 * again. *closed (NULL: not wanted) as cons_gate_closed. Also brings the
 * waiting gauge up to date. */
int64_t cons_gate_allowance(cons_gate *g, int64_t now_us, int64_t *wait_ms, bool *closed);
/* One call wants to start now: true when it may (and it is counted); false
 * with *wait_ms when the gate closed since the allowance was asked. A call
 * made while tripped is a probe: *probe_trip is then its trip (else 0), to
 * be given to cons_gate_probe_over when it ends, however it ends. */
bool cons_gate_try_start(cons_gate *g, int64_t now_us, uint64_t *probe_trip, int64_t *wait_ms);
void cons_gate_probe_over(cons_gate *g, uint64_t probe_trip);
/* What a call's outcome changes; *pause_ms is how long new calls now wait
 * (0 when the outcome closes nothing). */
cons_gate_change cons_gate_learn(cons_gate *g, cons_call_outcome o, int64_t retry_after_ms,
                                 int64_t now_us, int64_t *pause_ms);
/* Changes the steady rate (KILN_PROVIDER_RATE's share) from now_us on. */
void cons_gate_set_rate(cons_gate *g, double rate_per_s, int64_t now_us);
/* True while a 429 pause lasts or the breaker is tripped (not for a steady
 * rate); the state the unit tests check (allowance reports it too). */
bool cons_gate_closed(cons_gate *g, int64_t now_us);
/* What another consumer of the same provider account told (gatenews.c). */
typedef enum {
    CONS_NEWS_RATE_LIMITED = 1, /* a 429: no new calls for pause_ms */
    CONS_NEWS_OUTAGE,           /* its breaker tripped or a probe failed */
    CONS_NEWS_OUTAGE_OVER,      /* its breaker closed: the provider answers again */
    CONS_NEWS_HANDOVER,         /* it stopped while tripped: the probing is the hearer's */
} cons_news;
/* Applies a peer's news: a 429 closes the gate for pause_ms (1 s when 0, at
 * most cap_ms), as an own 429 would; an outage holds new calls back until
 * its end is told, at most 2 x cap_ms from now (only with the breaker on: its
 * probes are the teller's; a hold that runs out unended trips this gate's
 * breaker, as a HANDOVER does); OUTAGE_OVER ends that hold and, the provider
 * having answered, this gate's own trip; HANDOVER ends the hold and trips
 * this gate's breaker (with one on), so that it probes instead of sending
 * every call into a provider last seen down. Returns true when
 * the gate went from open to closed or back. */
bool cons_gate_hear(cons_gate *g, cons_news news, int64_t pause_ms, int64_t now_us);
/* What this gate would tell a consumer that just started: OUTAGE while its
 * breaker is tripped, else RATE_LIMITED with what is left of a 429's pause;
 * false when open (a peer's outage is the teller's to tell). */
bool cons_gate_news_now(cons_gate *g, int64_t now_us, cons_news *news, int64_t *pause_ms);
/* Whether a peer's hold ran out unended and tripped the breaker since the
 * last call (then it probes); read once. */
bool cons_gate_hold_lapsed(cons_gate *g);
/* The outcome class of a finished call (openai_handle_result's verdict and error code). */
cons_call_outcome cons_gate_outcome(openai_verdict v, const char *err_code,
                                    const char *provider_code, long http_status);
/* The process's gate (set up by main.c from the settings; metrics, logs). */
void cons_gate_setup(void);
void cons_gate_teardown(void);
/* Fetch thread: how many calls may start now (0: wait *wait_ms). */
int64_t cons_gate_calls_allowed(int64_t *wait_ms);
/* Fetch thread: j's call is about to start; false (with *wait_ms) when it
 * must wait instead (the gate closed after the batch was fetched). */
bool cons_gate_call_starts(cons_job *j, int64_t *wait_ms);
/* Transfer thread: j's call ended with verdict v. */
void cons_gate_call_ended(const cons_job *j, openai_verdict v, long http_status);
/* j is freed (any thread): a probe's place is free again. */
void cons_gate_job_over(const cons_job *j);
/* The process's steady rate becomes rate_per_s (status.c: this process's
 * share of KILN_PROVIDER_RATE). */
void cons_gate_share_rate(double rate_per_s);
/* "ok", "paused" (a 429's Retry-After, own or a peer's), "tripped" (the
 * breaker) or "held" (another consumer's tripped breaker), now (any thread). */
const char *cons_gate_state_name(void);
/* A peer's news (gatenews.c, a libnats thread): applied, logged, counted. */
void cons_gate_heard(cons_news news, int64_t pause_ms, const char *teller);
/* cons_gate_news_now of the process's gate (false before setup). */
bool cons_gate_news(cons_news *news, int64_t *pause_ms);

/* ---- gatenews.c: kiln.consumer.provider, the gate's news among consumers ---- */
/* Subscribes; the account key is SHA-256 of KILN_PROVIDER_URL, a NUL and
 * KILN_PROVIDER_KEY (first 8 bytes, hex), so only consumers of one account
 * hear each other. */
kiln_status cons_gatenews_start(void);
/* Tells HANDOVER when this process stops with its breaker tripped (the
 * others would otherwise hold back until twice KILN_RETRY_CAP), then
 * unsubscribes. */
void cons_gatenews_stop(void);
/* Tells the other consumers of the account (any thread; a core publish,
 * nothing waited for; before cons_gatenews_start, nothing). */
void cons_gatenews_tell(cons_news news, int64_t pause_ms);

/* ---- imagefile.c ---- */
/* Appends bytes to the calling thread's pack under data_dir (no fsync) and
 * sets img->pack, offset and size_bytes. Between cons_image_stage_begin()
 * and cons_image_stage_end() the bytes are only staged in memory until
 * cons_image_flush() (an image too large for the stage is written at once):
 * a transition naming them must not leave before that returned KILN_OK.
 * Each thread has its own pack and stage. */
kiln_status cons_image_save(const char *data_dir, const unsigned char *bytes, size_t len,
                            cons_image *img);
void cons_image_stage_begin(void);
/* Writes what this thread staged, in one write. KILN_EIO when anything
 * staged since the last flush was lost (its images must not be announced). */
kiln_status cons_image_flush(void);
/* Stops staging (after the round's last flush). */
void cons_image_stage_end(void);
/* A pack that would grow past bytes is left for a new one (0: the default,
 * 1 GiB). For tests. */
void cons_image_set_pack_max(uint64_t bytes);
/* A thread's pack not saved into for ms (> 0) is left for a new one at the
 * next save, so an old pack is never appended to (retention.c). */
void cons_image_set_roll_after(int64_t ms);
/* Writes what is staged and closes the calling thread's pack (at its exit). */
void cons_image_close(void);

/* ---- retention.c: images of finished jobs go after KILN_RESULT_TTL ------ */

/* Removes the packs under <data_dir>/images/packs, and the per-image files
 * of earlier versions under <data_dir>/images/<shard>, last written at
 * least ttl_ms + min(ttl_ms, 1 h) before now_ms (wall clock): every job whose
 * image is in such a file ended before its last write, so the store has
 * removed its record (KILN_RESULT_TTL, same value on store and consumer).
 * *removed counts the files removed. KILN_OK also when there is no images
 * directory. */
kiln_status cons_retention_sweep(const char *data_dir, int64_t ttl_ms, int64_t now_ms,
                                 size_t *removed);
/* Makes packs roll after min(ttl/2, 10 min) idle (10 min with retention
 * off) and starts the periodic sweep (KILN_RESULT_TTL, 0 = off). Also
 * compares KILN_RESULT_TTL with the store's (kiln.store.ping) every 5 s
 * until the store answers and every minute after, and logs a warning when
 * they differ. */
kiln_status cons_retention_start(void);
void cons_retention_stop(void);

/* ---- transfers.c ---- */
/* Starts cons_g.set->transfer_threads workers. */
kiln_status cons_transfers_start(void);
/* Hands a job to one of the transfer threads, round robin (fetch thread). */
void cons_transfers_submit(cons_job *j);
/* Wakes every transfer thread (cancel arrived). */
void cons_transfers_wakeup(void);
/* Drain timeout: every transfer thread hands back its running jobs with nak(0). */
void cons_transfers_abort_all(void);
/* Joins every transfer thread (each hands back what it still holds). */
void cons_transfers_stop(void);

/* ---- fetcher.c ---- */
kiln_status cons_fetcher_start(void);
/* A message of lane ("high", "normal", "low") was handed back with a delay:
 * the fetcher polls that lane when it is due again (any thread). */
void cons_fetcher_due(const char *lane, int64_t delay_ms);
void cons_fetcher_stop(void);   /* joins; call after cons_g.stopping is set */
/* When (monotonic ms) the last fetch on lane (KILN_LANE_*) that nats-server
 * answered with nothing (its own 404/408) was sent; 0 when none. Any thread. */
int64_t cons_fetcher_empty_at(int lane);
/* Ends the fetcher's idle long poll, if it is in one (any thread). */
void cons_fetcher_wake(void);

/* ---- pause.c: lanes paused with `kiln pause` (common/lanepause.h) ---- */
#define CONS_PAUSE_POLL_MS 500 /* how often the pause state is read */
/* Reads the state once, then every CONS_PAUSE_POLL_MS on a thread of its own. */
kiln_status cons_pause_start(void);
void cons_pause_stop(void);
/* True while lane (KILN_LANE_*) is paused (any thread). */
bool cons_pause_lane(int lane);

/* ---- peers.c: is a redelivered job's call still running in another consumer? ---- */
/* How long a redelivery whose call may run in a consumer that did not answer
 * waits, once per consumer, before it runs (that consumer may be reconnecting
 * after a NATS outage; libnats tries every 250 ms). */
#define CONS_PEER_GRACE_MS 1000
/* How long an ask waits for answers: peers on the same server answer in
 * about a millisecond; only a batch whose copies nobody runs waits the whole
 * time, with the fetch thread. A held copy is asked again with the longer
 * wait, so a peer that answered slowly once is heard the second time. */
#define CONS_PEER_ASK_MS 25
#define CONS_PEER_REASK_MS 250
/* Subscribes to kiln.consumer.running (after cons_status_start: the answers
 * carry its id). */
kiln_status cons_peers_start(void);
void cons_peers_stop(void);
/* Asks every other consumer which of the n (at most CONS_FETCH_MAX) stream
 * sequences' calls run there; sets held[i] for each one an answer names.
 * Gathers answers until all n are named or wait_ms passed; returns how many
 * were named. */
size_t cons_peers_ask(const uint64_t *seqs, size_t n, int64_t wait_ms, bool *held);

/* ---- status.c: answers kiln.consumer.status for `kiln stats` ---- */
/* With KILN_PROVIDER_RATE, also works out this process's share of it (at
 * start, then every 5 s on a thread of its own). */
kiln_status cons_status_start(void);
void cons_status_stop(void);
/* This process's id, "<host>:<pid>:<8 random hex>" (set by cons_status_start). */
const char *cons_status_id(void);
/* rate's part for a process of concurrency mine among consumers of all in
 * all (this one included); rate itself when it is alone or all is unknown. */
double cons_status_rate_share(double rate, int64_t mine, int64_t all);

/* ---- cancel.c ---- */
kiln_status cons_cancel_start(void);
void cons_cancel_stop(void);
/* Remembers a cancelled id (bounded, most recent win) and tells whether an id
 * was cancelled recently: a job fetched while its cancel is in flight is
 * skipped even when the store check did not answer. Any thread. */
void cons_cancel_remember(const char *id);
bool cons_cancel_recent(const char *id);

/* ---- memwatch.c: pause fetching while available memory is low ---- */
/* Parses a byte size: digits and an optional unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB,
 * T/TB/TiB (case-insensitive; all powers of 1024). "0" = off. */
kiln_status cons_memwatch_parse_bytes(const char *s, uint64_t *out);
/* Reads MemAvailable (bytes) from /proc/meminfo text. */
kiln_status cons_memwatch_parse_meminfo(const char *text, uint64_t *avail_bytes);
/* Sets the floor (KILN_MIN_AVAILABLE_MEM text); EINVAL when unparseable, EIO
 * when a non-zero floor cannot be watched. */
kiln_status cons_memwatch_init(const char *floor_text);
/* Tests: read meminfo from another file (NULL = /proc/meminfo). */
void cons_memwatch_set_source(const char *path);
/* Fetch thread: true while fetching should pause. Reads meminfo at most every
 * 250 ms; logs once when pausing and once when resuming. */
bool cons_memwatch_paused(void);

/* ---- nextseq.c: the next sequence KILN_JOBS holds ---- */
typedef enum { CONS_NEXTSEQ_FAILED, CONS_NEXTSEQ_NONE, CONS_NEXTSEQ_FOUND } cons_nextseq_result;
/* The lowest sequence at or after `from` that KILN_JOBS still holds, of
 * `subject` (NULL: any), into *seq: FOUND, NONE when there is none, FAILED
 * when JetStream did not answer (or answered something else). */
cons_nextseq_result cons_nextseq(uint64_t from, const char *subject, int64_t timeout_ms, uint64_t *seq);
/* The same for a $JS.API.STREAM.MSG.GET reply body. */
cons_nextseq_result cons_nextseq_parse(const char *reply, size_t len, uint64_t *seq);

/* ---- stall.c: re-publishes job messages a 2.9.10 restart left undeliverable ---- */
kiln_status cons_stall_start(void); /* no-op when stall_check_ms is 0 */
void cons_stall_stop(void);
/* Highest stream sequence the durable is certainly done with. */
uint64_t cons_stall_upper(uint64_t delivered_stream, uint64_t ack_floor_stream,
                          int64_t num_ack_pending);
/* The next at most max sequences in [first_seq, upper] from *cursor (wrapping
 * to first_seq); advances *cursor. False when the range is empty. */
bool cons_stall_window(uint64_t first_seq, uint64_t upper, uint64_t *cursor, uint64_t max,
                       uint64_t *from, uint64_t *to);
/* A lane message at or below the upper bound, still in the stream: re-drive it? */
bool cons_stall_should_redrive(uint64_t seq, uint64_t redrive_of, const cons_store_info *si);
/* What one stall round saw of a lane's durable (and the stream). */
typedef struct {
    bool valid;
    int64_t at_ms;               /* monotonic */
    uint64_t delivered_stream, delivered_consumer;
    uint64_t num_pending;        /* not yet delivered */
    int64_t num_ack_pending, max_ack_pending;
    int64_t num_redelivered;     /* ack-pending messages delivered more than once */
    uint64_t ack_floor_stream;
    uint64_t last_seq;           /* the stream's last sequence */
} cons_stall_obs;
/* May the durable count messages ack-pending that are gone from the stream?
 * nats-server 2.9.10 can come back from a crash so: it tries to redeliver
 * them for good ("error looking up message for consumer: deleted
 * message"), and each try uses up a pull request. Then some are
 * ack-pending, some were redelivered, and the ack floor stayed where it was
 * in the previous round. Acking a gone sequence is harmless either way. */
bool cons_stall_gone_suspected(const cons_stall_obs *prev, const cons_stall_obs *now);
/* Messages the durable skipped: it counted some as pending both in round prev
 * and in round now, delivered nothing in between, and yet answered a fetch of
 * this consumer with nothing after prev (empty_at_ms, monotonic; nats-server
 * 2.9.10 can do this after a restart until it is restarted again). Then the
 * lane's messages above the delivered sequence that were already there in
 * round prev, at most max of them, are [*from, *to]. */
bool cons_stall_skipped_window(const cons_stall_obs *prev, const cons_stall_obs *now, int64_t empty_at_ms,
                               uint64_t max, uint64_t *from, uint64_t *to);
/* The lowest message a durable keeps ack-pending, once found due and held
 * by no consumer (seq 0: none); at_ms monotonic. */
typedef struct {
    uint64_t seq;
    int64_t at_ms;
} cons_stall_suspect;
/* The durable has kept the suspect seq ack-pending, held by nobody, for
 * longer than settle_ms (by then a healthy server redelivers it: its
 * AckWait or nak delay is over) and answered a fetch of this consumer with
 * nothing after that (empty_at_ms, monotonic): nats-server 2.9.10 will
 * not deliver it again. */
bool cons_stall_unheld_overdue(const cons_stall_suspect *suspect, uint64_t seq, int64_t empty_at_ms,
                               int64_t settle_ms);

#endif
