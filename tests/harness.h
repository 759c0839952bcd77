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
 *       cr_assert_eq(h_stack_start(&s, NULL), 0);
 *       ...
 *       cr_assert_eq(h_stack_stop(&s), 0, "unclean shutdown, see logs");
 *   }
 */
#ifndef KILN_TEST_HARNESS_H
#define KILN_TEST_HARNESS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <nats/nats.h>

#define H_TOKEN_ALICE "tok-alice"
#define H_TOKEN_BOB "tok-bob"
#define H_MAX_ENV 24

/* The processes of a stack, in start order (stopped in reverse). */
typedef enum { H_NATS = 0, H_DEVPROVIDER, H_STORE, H_CONSUMER, H_GATEWAY, H_NPROC } h_comp;

typedef struct {
    const char *name;       /* "nats", "devprovider", ... */
    char exe[PATH_MAX];
    char log_path[PATH_MAX];
    char *env[H_MAX_ENV];   /* extra "K=V" entries for this process, into env_store */
    char env_store[H_MAX_ENV][512]; /* no heap: a failed test longjmps past h_stack_stop */
    int nenv;
    pid_t pid;              /* 0 when not running */
    int starts;             /* how many times it was started */
    int last_status;        /* waitpid status of the last exit, -1 if none */
    int unclean;            /* count of exits that were not "0 after SIGTERM" */
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

/* One component. h_proc_start starts it again with the same settings (ports,
 * data dir, environment); h_proc_kill9 SIGKILLs it and reaps it; h_proc_term
 * SIGTERMs it, waits (10 s, then SIGKILL) and returns its exit code (or 128+sig). */
int h_proc_start(h_stack *s, h_comp c);
int h_proc_kill9(h_stack *s, h_comp c);
int h_proc_term(h_stack *s, h_comp c);
int h_proc_restart(h_stack *s, h_comp c); /* h_proc_term then h_proc_start; 0 on success */
int h_proc_alive(h_stack *s, h_comp c);

/* Waits (30 s) until the gateway's /readyz answers 200 again; 0 when it did. */
int h_stack_wait_ready(h_stack *s);

/* Prints the last `lines` lines of every log of the stack to stderr. */
void h_stack_dump_logs(const h_stack *s, int lines);

/* ---- waiting -------------------------------------------------------------- */

int64_t h_now_ms(void);
/* Polls cond(arg) every poll_ms until it returns non-zero or deadline_ms
 * passes. Returns 1 when the condition held, 0 on timeout. */
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

/* POST /v1/jobs with body; on 202 copies the id into id_out (>= 65 bytes).
 * Returns the HTTP status. */
long h_submit(h_stack *s, const char *token, const char *body, char *id_out);
/* POST /v1/jobs {"prompt": prompt}; same as above. */
long h_submit_prompt(h_stack *s, const char *token, const char *prompt, char *id_out);
/* GET /v1/jobs/{id}; returns the job object (caller json_decref) or NULL. */
json_t *h_get_job(h_stack *s, const char *token, const char *id, long *status_out);
/* Polls GET until the job's status is `state` (or, when state is NULL, any
 * terminal state) or deadline_ms passes. Returns the last job object seen
 * (caller json_decref), NULL if none was ever read. */
json_t *h_wait_job(h_stack *s, const char *token, const char *id, const char *state,
                   int64_t deadline_ms);
int h_state_terminal(const char *state);

/* ---- NATS ----------------------------------------------------------------- */

/* Connects to the stack's nats-server; *js may be requested (js != NULL).
 * Returns 0 on success. Close with h_nats_close(). */
int h_nats_connect(h_stack *s, natsConnection **nc, jsCtx **js);
void h_nats_close(natsConnection *nc, jsCtx *js);
/* JetStream publish of raw bytes with optional Nats-Msg-Id (waits for the
 * stream ack). Returns 0 on success. */
int h_js_publish(jsCtx *js, const char *subject, const void *data, int len, const char *msg_id);
/* Packs and publishes a JobRequest to `subject` with Nats-Msg-Id = its id. */
int h_publish_jobreq(jsCtx *js, const char *subject, const char *id, const char *user,
                     const char *prompt);
/* Number of messages in stream KILN_DONE whose Kiln-Job-Id header is id; the
 * last one's Kiln-Status is copied into last_status (may be NULL). -1 on error. */
int h_done_count(jsCtx *js, const char *id, char *last_status, size_t len);
/* Waits on a sync subscription for a message whose header Kiln-Job-Id is id
 * (others are skipped and destroyed). Returns the message (caller destroys)
 * or NULL on timeout. */
natsMsg *h_next_msg_for(natsSubscription *sub, const char *id, int64_t deadline_ms);
/* A header value of a message copied into out; 1 when present. */
int h_msg_header(natsMsg *m, const char *name, char *out, size_t len);

/* ---- other processes ------------------------------------------------------ */

/* Runs $KILN_BIN_DIR/<prog> argv... with the stack's environment, captures
 * stdout (and stderr into the log dir), kills it after timeout_ms. Returns the
 * exit code (or 128+signal, or -1 on spawn failure). *out is malloc'ed. */
int h_run_cli(h_stack *s, char *const argv[], char **out, int64_t timeout_ms);

/* The directory with the binaries: $KILN_BIN_DIR or build/san/bin. */
const char *h_bin_dir(void);

#endif
