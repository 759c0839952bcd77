/* harness.h - integration test harness: starts a real nats-server and the real
 * Kiln binaries on free loopback ports, talks HTTP (libcurl) and NATS (libnats)
 * to them, and waits for conditions with deadlines.
 *
 * Every test runs in its own Criterion worker process and starts its own stack,
 * so tests are independent and may run in parallel. A test's files live in
 * $KILN_IT_ROOT/<suite>.<test>[.<k>]/ (data/, nats/, logs/); the report hook in
 * harness.c prints the tail of every log when a test fails and removes the
 * directory afterwards. Processes are started with PR_SET_PDEATHSIG so a
 * timed-out or crashed test leaves nothing behind.
 *
 *   TestSuite(e2e, .fini = h_fini, .timeout = 90);
 *   Test(e2e, submit) {
 *       h_stack s;
 *       h_start(&s, NULL);           // asserts the stack came up
 *       char id[65];
 *       cr_assert_eq(h_submit(&s, H_TOKEN_ALICE, "{\"prompt\":\"fox\"}", id), 202);
 *       h_expect_job(&s, H_TOKEN_ALICE, id, "completed", 1, 30000, "fox");
 *       h_stop(&s);                  // asserts clean exits, no sanitizer reports
 *   }
 *
 * Every wait takes a deadline and polls or blocks on a condition; no test
 * sleeps for a fixed time except to observe that something does NOT happen
 * (an "observation window", said so where it is used).
 */
#ifndef KILN_TEST_HARNESS_H
#define KILN_TEST_HARNESS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <nats/nats.h>

#include "kiln.pb-c.h"

#define H_TOKEN_ALICE "tok-alice"
#define H_TOKEN_BOB "tok-bob"
#define H_MAX_ENV 24

/* The processes of a stack, in start order (stopped in reverse). */
typedef enum { H_NATS = 0, H_DEVPROVIDER, H_STORE, H_CONSUMER, H_GATEWAY, H_NPROC } h_comp;

typedef struct {
    const char *name;       /* "nats", "devprovider", ... */
    char exe[PATH_MAX];
    char log_path[PATH_MAX];
    /* Extra "K=V" entries for this process. The strings live in env_store, not
     * on the heap: a failed assertion longjmps past h_stack_stop, and heap
     * strings would then leak (LeakSanitizer fails the run). Change them only
     * with h_proc_setenv. */
    char *env[H_MAX_ENV];
    char env_store[H_MAX_ENV][512];
    int nenv;
    pid_t pid;              /* 0 when not running */
    int starts;             /* how many times it was started */
    int last_status;        /* waitpid status of the last exit, -1 if none */
    int unclean;            /* count of exits that were not "0 after SIGTERM" */
    int port_hold;          /* 1 + fd of a socket bound to its port while a test keeps
                             * it stopped (h_proc_term/h_proc_kill9), 0 = none */
} h_proc;

typedef struct {
    const char *env[H_MAX_ENV]; /* extra "K=V" for every Kiln process (NULL-terminated) */
    const char *consumer_env[8];/* extra "K=V" for the consumer only */
    int no_consumer;            /* start without a consumer */
} h_stack_opts;

typedef struct h_stack {
    char root[1024];
    char data_dir[1100];
    char nats_dir[1100];
    char log_dir[1100];
    int nats_port, gw_port, dev_port, cons_metrics_port, store_metrics_port;
    char nats_url[64];
    char gw_url[64];        /* "http://127.0.0.1:PORT" */
    char dev_url[64];
    h_proc procs[H_NPROC];
    int started;
} h_stack;

/* ---- stack ---------------------------------------------------------------- */

/* Starts nats-server, dev provider, store, consumer and gateway and waits until
 * the gateway's /readyz answers 200. Returns 0 on success; on failure prints
 * why (and log tails) and returns -1 (what did start stays registered for
 * h_fini / h_stack_stop). */
int h_stack_start(h_stack *s, const h_stack_opts *opts);

/* SIGTERM every running process (reverse order), wait up to 10 s each, then
 * SIGKILL. Returns the number of problems: Kiln processes that did not exit 0
 * after SIGTERM (over the whole test, restarts included) and sanitizer reports
 * found in any log. Safe to call twice. */
int h_stack_stop(h_stack *s);

/* Criterion .fini for every suite: stops whatever a failed test left running. */
void h_fini(void);

/* h_stack_start / h_stack_stop that cr_assert success: "stack did not start",
 * "unclean shutdown (see logs)". The usual first and last line of a test. */
void h_start(h_stack *s, const h_stack_opts *opts);
void h_stop(h_stack *s);

/* One component. h_proc_start starts it again with the same settings (ports,
 * data dir, environment); h_proc_kill9 SIGKILLs it and reaps it; h_proc_term
 * SIGTERMs it, waits (10 s, then SIGKILL) and returns its exit code (or 128+sig).
 * While stopped, its listening port stays bound (not listening) by the
 * harness until h_proc_start: a connection to it is refused, as to the
 * stopped process, and another test running beside this one cannot choose
 * the port for its own stack meanwhile. */
int h_proc_start(h_stack *s, h_comp c);
int h_proc_kill9(h_stack *s, h_comp c);
int h_proc_term(h_stack *s, h_comp c);
int h_proc_restart(h_stack *s, h_comp c); /* h_proc_term then h_proc_start; 0 on success */
int h_proc_alive(h_stack *s, h_comp c);
/* Starts one more process of component c (e.g. a second consumer) with c's
 * settings, env entries ("K=V") replacing them, logging to
 * <log_dir>/<log_name>.log; returns its pid (-1 on failure). Stop it with
 * h_term_pid; one left running is killed with the test worker. */
pid_t h_spawn_another(h_stack *s, h_comp c, const char *const *env, const char *log_name);
/* SIGTERMs pid, waits (10 s, then SIGKILL) and returns its exit code (or 128+sig). */
int h_term_pid(pid_t pid);
/* Changes component c's environment for its next start: "K=V" sets K
 * (replacing an earlier value, including the harness's own), "K" alone
 * removes it. Returns 0, or -1 when the entry is too long or the table is
 * full. No heap (see h_proc.env), so nothing to free. */
int h_proc_setenv(h_stack *s, h_comp c, const char *kv);

/* Waits (30 s) until the gateway's /readyz answers 200 again; 0 when it did. */
int h_stack_wait_ready(h_stack *s);

/* Prints the last `lines` lines of every log of the stack to stderr. */
void h_stack_dump_logs(const h_stack *s, int lines);
/* 1 when a line of component c's log (all its runs) contains needle. */
int h_log_contains(const h_stack *s, h_comp c, const char *needle);
/* How many lines of component c's log (all its runs) contain needle. */
int h_log_count(const h_stack *s, h_comp c, const char *needle);
/* Waits until it does; 1 when it did within deadline_ms. */
int h_wait_log(const h_stack *s, h_comp c, const char *needle, int64_t deadline_ms);
/* The same for a log file of its own (a process of h_spawn_another). */
int h_file_log_count(const char *path, const char *needle);
int h_wait_file_log(const char *path, const char *needle, int64_t deadline_ms);

/* ---- waiting -------------------------------------------------------------- */

/* Monotonic milliseconds from an arbitrary origin: only differences mean anything. */
int64_t h_now_ms(void);
/* The median of v[0..n) (sorts v in place); 0 when n is 0. */
int64_t h_median(int64_t *v, size_t n);
/* Polls cond(arg) every poll_ms until it returns non-zero or deadline_ms
 * (a duration, at most a day: an absolute time fails the test) passes.
 * Returns 1 when the condition held, 0 on timeout. */
int h_wait_for(int (*cond)(void *arg), void *arg, int64_t deadline_ms, int poll_ms);

/* ---- HTTP ----------------------------------------------------------------- */

typedef struct {
    long status;            /* HTTP status, 0 when the request failed (error says why) */
    char *headers;          /* raw response headers */
    char *body;             /* NUL-terminated */
    size_t body_len;
    json_t *json;           /* body parsed as JSON, NULL if it is not */
    char error[256];
} h_resp;

/* One request; token/ctype/body/extra_header may be NULL. Total timeout 20 s
 * (h_http_timeout for another). Returns r->status. Free with h_resp_free(). */
long h_http(h_resp *r, const char *method, const char *url, const char *token,
            const char *ctype, const char *body, const char *extra_header);
long h_http_timeout(h_resp *r, const char *method, const char *url, const char *token,
                    const char *ctype, const char *body, size_t body_len,
                    const char *extra_header, long timeout_ms);
void h_resp_free(h_resp *r);
/* Copies the value of header `name` (case-insensitive, last occurrence) into
 * out. Returns 1 when found. */
int h_resp_header(const h_resp *r, const char *name, char *out, size_t outlen);

/* Gateway request with a JSON body (content type application/json). path
 * starts with "/". */
long h_api(h_stack *s, h_resp *r, const char *method, const char *path, const char *token,
           const char *json_body);

/* Status of an unauthenticated GET of a gateway path ("/readyz", "/healthz",
 * "/metrics"); 0 when the request failed. */
long h_gw_status(h_stack *s, const char *path, long timeout_ms);
/* One gateway request (h_api) that must be an error: h_expect_error on it. */
void h_expect_api_error(h_stack *s, const char *method, const char *path, const char *token,
                        const char *json_body, long status, const char *code, const char *field);

/* JSON helpers: the string/integer at key, or NULL/-1. */
const char *h_jstr(const json_t *o, const char *key);
long long h_jint(const json_t *o, const char *key);
/* The error code of an error body {"error":{"code",...}}, or NULL. */
const char *h_err_code(const h_resp *r);
const char *h_err_field(const h_resp *r);

/* Criterion-asserts that r is an error answer: status, {"error":{"code",
 * "message"}} with a non-empty message, and (when field != NULL) error.field. */
void h_expect_error(const h_resp *r, long status, const char *code, const char *field);

/* A process-unique id with a prefix, e.g. "raw-1234-1700000000123" (>= 65 bytes). */
void h_unique_id(char *out, const char *prefix);

/* POST /v1/jobs with body; on 202 (or 200 for a known Idempotency-Key)
 * copies the id into id_out (>= 65 bytes, "" otherwise). Returns the HTTP
 * status. */
long h_submit(h_stack *s, const char *token, const char *body, char *id_out);
/* POST /v1/jobs {"prompt": prompt}; same as above. */
long h_submit_prompt(h_stack *s, const char *token, const char *prompt, char *id_out);
/* Submits n jobs, body k being body_fmt with %d replaced by k (body_fmt has
 * exactly one %d), and cr_asserts each answered 202; ids into ids[k]. */
void h_submit_each(h_stack *s, const char *token, const char *body_fmt, int n, char ids[][65]);
/* GET /v1/jobs/{id}; returns the job object (caller json_decref) or NULL. */
json_t *h_get_job(h_stack *s, const char *token, const char *id, long *status_out);
/* Polls GET until the job's status is `state` (or, when state is NULL, any
 * terminal state) or deadline_ms passes. Returns the last job object seen
 * (caller json_decref), NULL if none was ever read. */
json_t *h_wait_job(h_stack *s, const char *token, const char *id, const char *state,
                   int64_t deadline_ms);
int h_state_terminal(const char *state);
/* Waits like h_wait_job and cr_expects the job reached `state` (NULL: any
 * terminal state) and, when attempts >= 0, that many attempts. `what` names
 * the job in failure messages (which carry the whole job object). */
void h_expect_job(h_stack *s, const char *token, const char *id, const char *state, int attempts,
                  int64_t deadline_ms, const char *what);
/* Observation window: polls the job for window_ms and returns 1 when its
 * status was `state` at every look, 0 (with the job in why) at the first
 * look where it was not. For "X must NOT happen" checks; not a wait. */
int h_job_stays(h_stack *s, const char *token, const char *id, const char *state, int64_t window_ms,
                char *why, size_t whylen);
/* POST /v1/jobs/{id}/{action} ("cancel", "viewed"). Returns the HTTP status;
 * free r with h_resp_free. */
long h_job_post(h_stack *s, h_resp *r, const char *token, const char *id, const char *action);
/* GET /v1/jobs<query> (query "" or "?limit=3..."): the whole list object
 * (caller json_decref), NULL unless 200. */
json_t *h_list(h_stack *s, const char *token, const char *query);
/* Number of jobs on the caller's first list page of 200; -1 on error. */
int h_list_count(h_stack *s, const char *token);

/* ---- job fields ------------------------------------------------------------ */

/* The job as compact JSON for failure messages; "(no job)" for NULL. Caller frees. */
char *h_job_dump(const json_t *job);
/* RFC 3339 UTC with milliseconds ("2026-11-24T07:04:42.123Z", exactly that
 * shape) to unix ms; -1 when t is NULL or not that shape. */
int64_t h_ts_ms(const char *t);
/* h_ts_ms of a job's time field ("created_at", "started_at", ...). */
int64_t h_job_ms(const json_t *job, const char *key);
/* 1 when key is absent or JSON null. */
int h_jnull(const json_t *o, const char *key);
/* Sum of a counter or gauge (over its label sets) on component c's /metrics
 * (consumer, store, gateway, devprovider); -1 when absent or unreachable. */
double h_metric(h_stack *s, h_comp c, const char *name);
/* Waits (up to deadline_ms) until metric `name` of component c exceeds
 * `above`; 1 when it did. */
int h_wait_metric_above(h_stack *s, h_comp c, const char *name, double above, int64_t deadline_ms);
/* Waits until the metric (name may carry labels: kiln_x{lane="high"}) equals want. */
int h_wait_metric_eq(h_stack *s, h_comp c, const char *name, double want, int64_t deadline_ms);

/* ---- NATS ----------------------------------------------------------------- */

/* Connects to the stack's nats-server; *js may be requested (js != NULL).
 * Returns 0 on success. Close with h_nats_close(). */
int h_nats_connect(h_stack *s, natsConnection **nc, jsCtx **js);
void h_nats_close(natsConnection *nc, jsCtx *js);
/* JetStream publish of raw bytes with optional Nats-Msg-Id (waits for the
 * stream ack). Returns 0 on success. */
int h_js_publish(jsCtx *js, const char *subject, const void *data, int len, const char *msg_id);
/* Packs r (created_at_ms set to now when 0) and publishes it to `subject`
 * with Nats-Msg-Id = r->id, waiting up to max_wait_ms (0: the library's
 * default) for the stream's ack; its sequence into *seq (may be NULL).
 * Returns 0 on success, -1 quietly (a caller may retry through an outage). */
int h_publish_request(jsCtx *js, const char *subject, const Kiln__V1__JobRequest *r,
                      int64_t max_wait_ms, uint64_t *seq);
/* Packs and publishes a JobRequest to `subject` with Nats-Msg-Id = its id. */
int h_publish_jobreq(jsCtx *js, const char *subject, const char *id, const char *user,
                     const char *prompt);
/* The same, with the stream sequence it got into *seq (may be NULL). */
int h_publish_jobreq_at(jsCtx *js, const char *subject, const char *id, const char *user,
                        const char *prompt, uint64_t *seq);
/* h_publish_jobreq_at, then waits (30 s) until the store records the job
 * pending, cr_asserting both; returns the job as user's GET (token) shows
 * it, for the caller to json_decref. */
json_t *h_publish_recorded(h_stack *s, jsCtx *js, const char *subject, const char *id, const char *user,
                           const char *token, const char *prompt, uint64_t *seq);
/* A packed COMPLETED transition of alice's job id, attempt 1, with one
 * image (url /v1/jobs/<id>/images/0, size_bytes, no ImageBlob), as a
 * consumer publishes it on kiln.tx. The caller frees *buf. */
void h_pack_completed(const char *id, const char *prompt, uint64_t size_bytes, uint8_t **buf,
                      size_t *len);
/* Number of messages in stream KILN_DONE whose Kiln-Job-Id header is id; the
 * last one's Kiln-Status is copied into last_status (may be NULL). -1 on error. */
int h_done_count(jsCtx *js, const char *id, char *last_status, size_t len);
/* Calls fn on every message of stream, oldest first (the message is
 * destroyed after fn returns; natsMsg_GetSequence gives its sequence).
 * Returns how many there were, -1 on error. */
int h_stream_scan(jsCtx *js, const char *stream, void (*fn)(natsMsg *m, void *arg), void *arg);
/* h_stream_scan of KILN_DONE. */
int h_done_scan(jsCtx *js, void (*fn)(natsMsg *m, void *arg), void *arg);
/* A header value of a message copied into out; 1 when present. */
int h_msg_header(natsMsg *m, const char *name, char *out, size_t len);
/* The message's payload as a JobStatus (caller kiln__v1__job_status__free_unpacked), or NULL. */
Kiln__V1__JobStatus *h_msg_status(natsMsg *m);

/* Collects every message of one subject (a sync subscription read by the
 * test's own thread, so no locking): messages are kept in arrival order and
 * can be counted and looked at per job (header Kiln-Job-Id) while the test
 * goes on. */
typedef struct h_collector h_collector;
/* Reads what has arrived, then waits until at least n messages for id (NULL:
 * any message) are there or deadline_ms passes. Returns how many there are
 * (>= n on success). n = 0 just counts what has arrived. */
int h_collect_wait(h_collector *c, const char *id, int n, int64_t deadline_ms);
/* The k-th (0-based) collected message for id (NULL: any), or NULL. Owned by
 * the collector (valid until h_nats_free). */
natsMsg *h_collect_msg(h_collector *c, const char *id, int k);

/* A test's NATS side: a connection, a JetStream context, and collectors on
 * jobs.done and jobs.dead subscribed (and flushed) before the test acts. */
typedef struct {
    natsConnection *nc;
    jsCtx *js;
    h_collector *done;
    h_collector *dead;
} h_nats;
/* Connects to the stack's nats-server and subscribes; cr_asserts success. */
void h_nats_open(h_stack *s, h_nats *n);
void h_nats_free(h_nats *n);
/* Waits (deadline_ms) until KILN_DONE holds a copy for id, then cr_expects
 * exactly one copy, with Kiln-Status `state`. */
void h_expect_done_once(h_nats *n, const char *id, const char *state, int64_t deadline_ms);
/* jobs.status request for id: the reply's JobStatus (caller frees), or NULL
 * with the reply's Kiln-Error header (or the NATS error) in err. */
Kiln__V1__JobStatus *h_status_request(h_nats *n, const char *id, char *err, size_t errlen);
/* The durable `durable` on KILN_JOBS has delivered something and has nothing
 * pending or unacked (the consumer finished its work). */
int h_worker_idle(jsCtx *js, const char *durable);
/* Waits (up to deadline_ms) until h_worker_idle; 1 when it was. */
int h_wait_worker_idle(jsCtx *js, const char *durable, int64_t deadline_ms);
/* Takes the next delivery of `durable` on KILN_JOBS as a consumer would (a
 * pull of one message, 5 s); cr_asserts it came. Its reply subject is the
 * $JS.ACK subject to ack, nak or keep it in progress with. Caller destroys. */
natsMsg *h_take_delivery(h_nats *n, const char *durable);
/* Prints durable's delivered/ack-floor sequences and counts on KILN_JOBS to
 * stderr (for a failure message). */
void h_dump_durable(jsCtx *js, const char *durable);

/* ---- other processes ------------------------------------------------------ */

/* Runs $KILN_BIN_DIR/<prog> argv... with the stack's environment, captures
 * stdout (and stderr into the log dir), kills it after timeout_ms. Returns the
 * exit code (or 128+signal, or -1 on spawn failure). *out is malloc'ed. */
int h_run_cli(h_stack *s, char *const argv[], char **out, int64_t timeout_ms);
/* `kiln stats --json`: cr_asserts exit 0 and one JSON object (caller json_decref). */
json_t *h_kiln_stats(h_stack *s);

/* Runs $KILN_BIN_DIR/<argv[0]> alone, with exactly envp (no stack), stdout
 * and stderr together into *out (caller frees), killed after timeout_ms.
 * Returns as h_run_cli. */
int h_run_alone(char *const argv[], char *const envp[], char **out, int64_t timeout_ms);

/* The directory with the binaries: $KILN_BIN_DIR or build/san/bin. */
const char *h_bin_dir(void);

#endif
