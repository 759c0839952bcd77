/* jobs.c - the `kiln` commands on jobs: submit, get, list, watch, cancel. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "config.h"
#include "jobreq.h"
#include "pb.h"

#define CLI_DEFAULT_WAIT_S 300

static volatile sig_atomic_t cli_stop;

static void cli_on_signal(int sig)
{
    (void)sig;
    cli_stop = 1;
}

static const char cli_usage_submit[] =
    "usage: kiln submit PROMPT [options]\n"
    "  --user U             owner of the job (env KILN_USER, default \"" CLI_DEFAULT_USER "\")\n"
    "  --priority P         high | normal | low (default normal)\n"
    "  --n N                images to generate, 1-4 (default 1)\n"
    "  --size WxH           image size, e.g. 1024x1024\n"
    "  --model M            provider model name\n"
    "  --delay MS           do not start before MS milliseconds from now (0-86400000)\n"
    "  --id ID              job id (default: a new UUIDv7); resubmitting an id within 2 min is a no-op\n"
    "  --job-timeout S      per-attempt limit in seconds, 1-3600 (default 300)\n"
    "  --max-attempts N     1-10 (default 5)\n"
    "  --wait               wait for the terminal state and print it (exit 1 unless completed)\n"
    "  --timeout S          with --wait: give up after S seconds (default 300)\n"
    "  --repeat N           submit N copies asynchronously (bulk), print the ids and a summary on stderr\n"
    "  --nats-url URL, --json, --help\n"
    "Prints the job id; the job is durable in JetStream when this returns 0.\n";

static const char cli_usage_get[] =
    "usage: kiln get ID [--nats-url URL] [--json]\n"
    "Prints the job's current state as one line:\n"
    "  id=... status=... attempts=N created_at=... images=url1,url2 error=code:message\n";

static const char cli_usage_list[] =
    "usage: kiln list [--user U] [--limit N] [--cursor C] [--nats-url URL] [--json]\n"
    "  --user U     whose jobs (env KILN_USER, default \"" CLI_DEFAULT_USER "\")\n"
    "  --limit N    page size 1-200 (default 50)\n"
    "  --cursor C   next_cursor from a previous page\n"
    "Prints one line per job, newest first, then next_cursor=... active_count=N unviewed_count=N.\n";

static const char cli_usage_watch[] =
    "usage: kiln watch [--user U] [--count N] [--timeout S] [--nats-url URL] [--json]\n"
    "Prints one line per jobs.done event until Ctrl-C.\n"
    "  --user U     only this user's jobs (default: everyone's)\n"
    "  --count N    exit after N events\n"
    "  --timeout S  exit after S seconds\n";

static const char cli_usage_cancel[] =
    "usage: kiln cancel ID [--nats-url URL] [--json]\n"
    "Prints status=cancelled|already_finished|not_found; exits 0 only when cancelled.\n";

static int cli_submit_bulk(kiln_client *c, const kiln_job_spec *spec, int64_t repeat)
{
    char id[KILN_ID_MAX_LEN + 1];
    char err[256] = "";
    int64_t t0 = kiln_mono_us();
    int64_t sent = 0;
    for (; sent < repeat; sent++) {
        kiln_status st = kiln_client_submit_async(c, spec, id, sizeof id, err, sizeof err);
        if (st != KILN_OK) {
            cli_error("submit %" PRId64 " failed: %s", sent + 1, err);
            break;
        }
        printf("%s\n", id);
    }
    int64_t t1 = kiln_mono_us();
    uint64_t failed = 0;
    kiln_status st = kiln_client_flush(c, 60000, &failed);
    int64_t t2 = kiln_mono_us();
    double secs = (double)(t2 - t0) / 1e6;
    fprintf(stderr,
            "kiln: submitted=%" PRId64 " failed=%" PRIu64 " publish_ms=%.1f total_ms=%.1f "
            "rate=%.0f/s flush=%s\n",
            sent, failed, (double)(t1 - t0) / 1e3, (double)(t2 - t0) / 1e3,
            secs > 0 ? (double)sent / secs : 0.0, kiln_status_str(st));
    if (sent < repeat) return CLI_EXIT_UNAVAIL;
    if (st != KILN_OK) return cli_exit_of(st);
    return failed > 0 ? CLI_EXIT_UNAVAIL : CLI_EXIT_OK;
}

int cli_cmd_submit(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {CLI_OPT_USER,    CLI_OPT_PRIORITY,    CLI_OPT_N,
                                  CLI_OPT_SIZE,    CLI_OPT_MODEL,       CLI_OPT_DELAY,
                                  CLI_OPT_ID,      CLI_OPT_JOB_TIMEOUT, CLI_OPT_MAX_ATTEMPTS,
                                  CLI_OPT_WAIT,    CLI_OPT_TIMEOUT,     CLI_OPT_REPEAT};
    int r = cli_parse(argc, argv, cli_usage_submit, allowed, sizeof allowed / sizeof allowed[0], 1,
                      a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    if (a->npositional != 1) {
        cli_error("submit needs exactly one PROMPT argument (see kiln submit --help)");
        return CLI_EXIT_USAGE;
    }
    if (a->have_timeout && !a->wait) {
        cli_error("--timeout only applies with --wait");
        return CLI_EXIT_USAGE;
    }
    if (a->repeat > 1 && (a->wait || a->id != NULL)) {
        cli_error("--repeat cannot be combined with --wait or --id");
        return CLI_EXIT_USAGE;
    }

    kiln_job_spec spec;
    kiln_job_spec_init(&spec);
    spec.prompt = a->positional[0];
    spec.user_id = a->user != NULL ? a->user : cli_default_user();
    spec.id = a->id;
    spec.model = a->model;
    spec.size = a->size;
    spec.n = (unsigned)a->n;
    spec.timeout_s = (unsigned)a->job_timeout_s;
    spec.max_attempts = (unsigned)a->max_attempts;
    if (a->delay_ms > 0) spec.not_before_ms = kiln_now_ms() + a->delay_ms;
    if (a->priority != NULL && kiln_priority_parse(a->priority, &spec.priority) != KILN_OK) {
        cli_error("--priority must be high, normal or low, got \"%s\"", a->priority);
        return CLI_EXIT_USAGE;
    }

    /* Check the job before connecting so bad input fails fast and offline. */
    char id[KILN_ID_MAX_LEN + 1];
    char err[256] = "";
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_client_encode(&spec, id, sizeof id, err, sizeof err, &buf, &len);
    free(buf);
    if (st != KILN_OK) {
        cli_error("invalid job: %s", err);
        return CLI_EXIT_USAGE;
    }

    int rc = CLI_EXIT_OK;
    Kiln__V1__JobStatus *js = NULL;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    if (a->repeat > 1) {
        rc = cli_submit_bulk(c, &spec, a->repeat);
        goto out;
    }
    st = kiln_client_submit(c, &spec, id, sizeof id, err, sizeof err);
    if (st != KILN_OK) {
        cli_error("submit failed: %s", err);
        rc = cli_exit_of(st);
        goto out;
    }
    if (a->cc.json && !a->wait) {
        if (cli_print_json(json_pack("{s:s, s:s}", "id", id, "status", "pending")) != 0)
            rc = CLI_EXIT_UNAVAIL;
        goto out;
    }
    if (!a->cc.json) printf("%s\n", id);
    fflush(stdout);
    if (!a->wait) goto out;

    int64_t timeout_ms = (a->have_timeout ? a->timeout_s : CLI_DEFAULT_WAIT_S) * 1000;
    st = kiln_client_wait(c, id, timeout_ms, &js);
    if (st != KILN_OK) {
        cli_error("waiting for job %s: %s", id, cli_explain(st));
        rc = cli_exit_of(st);
        goto out;
    }
    if (cli_print_status(&a->cc, js) != 0) rc = CLI_EXIT_UNAVAIL;
    else if (js->state != KILN__V1__JOB_STATE__JOB_STATE_COMPLETED) rc = CLI_EXIT_JOB;
out:
    if (js != NULL) kiln__v1__job_status__free_unpacked(js, NULL);
    kiln_client_destroy(c);
    return rc;
}

int cli_cmd_get(int argc, char **argv, cli_args *a)
{
    int r = cli_parse(argc, argv, cli_usage_get, NULL, 0, 1, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    if (a->npositional != 1 || !kiln_jobreq_id_ok(a->positional[0])) {
        cli_error("get needs one job ID ([A-Za-z0-9_-]{1,64}; see kiln get --help)");
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_OK;
    Kiln__V1__JobStatus *js = NULL;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    kiln_status st = kiln_client_get(c, a->positional[0], &js);
    if (st != KILN_OK) {
        cli_error("get %s: %s", a->positional[0], cli_explain(st));
        rc = cli_exit_of(st);
        goto out;
    }
    if (cli_print_status(&a->cc, js) != 0) rc = CLI_EXIT_UNAVAIL;
out:
    if (js != NULL) kiln__v1__job_status__free_unpacked(js, NULL);
    kiln_client_destroy(c);
    return rc;
}

/* A list entry's status, with the id taken from the request if missing. */
static int cli_print_record(const cli_common *cc, const Kiln__V1__JobRecord *rec)
{
    Kiln__V1__JobStatus empty = KILN__V1__JOB_STATUS__INIT;
    Kiln__V1__JobStatus st = rec->status != NULL ? *rec->status : empty;
    if ((st.id == NULL || st.id[0] == '\0') && rec->request != NULL) st.id = rec->request->id;
    if ((st.prompt == NULL || st.prompt[0] == '\0') && rec->request != NULL)
        st.prompt = rec->request->prompt;
    if (!cc->json) return cli_print_status(cc, &st);
    json_t *o = cli_status_json(&st);
    if (o != NULL) json_object_set_new(o, "viewed", json_boolean(rec->viewed));
    return cli_print_json(o);
}

int cli_cmd_list(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {CLI_OPT_USER, CLI_OPT_LIMIT, CLI_OPT_CURSOR};
    int r = cli_parse(argc, argv, cli_usage_list, allowed, sizeof allowed / sizeof allowed[0], 0, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    int rc = CLI_EXIT_OK;
    Kiln__V1__StoreReply *rep = NULL;
    const char *user = a->user != NULL ? a->user : cli_default_user();
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    kiln_status st = kiln_client_list(c, user, (unsigned)a->limit, a->cursor, &rep);
    if (st != KILN_OK) {
        cli_error("list for user %s: %s", user, cli_explain(st));
        rc = cli_exit_of(st);
        goto out;
    }
    /* JSON mode prints one object per job, then the page summary object. */
    for (size_t i = 0; i < rep->n_jobs; i++) {
        if (rep->jobs[i] == NULL) continue;
        if (cli_print_record(&a->cc, rep->jobs[i]) != 0) {
            rc = CLI_EXIT_UNAVAIL;
            goto out;
        }
    }
    const char *next = (rep->next_cursor != NULL && rep->next_cursor[0]) ? rep->next_cursor : NULL;
    if (a->cc.json) {
        json_t *o = json_pack("{s:o, s:I, s:I}", "next_cursor",
                              next != NULL ? json_string(next) : json_null(), "active_count",
                              (json_int_t)rep->active_count, "unviewed_count",
                              (json_int_t)rep->unviewed_count);
        if (cli_print_json(o) != 0) rc = CLI_EXIT_UNAVAIL;
    } else {
        printf("next_cursor=%s active_count=%" PRIu64 " unviewed_count=%" PRIu64 "\n",
               next != NULL ? next : "", (uint64_t)rep->active_count,
               (uint64_t)rep->unviewed_count);
    }
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    kiln_client_destroy(c);
    return rc;
}

typedef struct {
    const cli_common *cc;
    const char *user; /* NULL = everyone */
    int64_t left;     /* events still to print; <= 0 = no limit */
    int failed;
} cli_watch_state;

/* Runs on the calling thread (kiln_client_watch_until polls a sync subscription). */
static int cli_watch_cb(const Kiln__V1__JobStatus *st, void *arg)
{
    cli_watch_state *w = arg;
    if (w->user != NULL && (st->user_id == NULL || strcmp(st->user_id, w->user) != 0)) return 0;
    if (cli_print_status(w->cc, st) != 0) {
        w->failed = 1;
        return 1;
    }
    fflush(stdout);
    if (w->left > 0 && --w->left == 0) return 1;
    return cli_stop != 0;
}

int cli_cmd_watch(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {CLI_OPT_USER, CLI_OPT_COUNT, CLI_OPT_TIMEOUT};
    int r = cli_parse(argc, argv, cli_usage_watch, allowed, sizeof allowed / sizeof allowed[0], 0,
                      a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    int rc = CLI_EXIT_OK;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    cli_watch_state w = {.cc = &a->cc, .user = a->user, .left = a->count, .failed = 0};
    int64_t timeout_ms = a->have_timeout ? a->timeout_s * 1000 : -1;
    kiln_status st = kiln_client_watch_until(c, timeout_ms, cli_watch_cb, &w, &cli_stop);
    if (st != KILN_OK) {
        cli_error("watch: %s", cli_explain(st));
        rc = cli_exit_of(st);
    } else if (w.failed) {
        rc = CLI_EXIT_UNAVAIL;
    }
    kiln_client_destroy(c);
    return rc;
}

int cli_cmd_cancel(int argc, char **argv, cli_args *a)
{
    int r = cli_parse(argc, argv, cli_usage_cancel, NULL, 0, 1, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    if (a->npositional != 1 || !kiln_jobreq_id_ok(a->positional[0])) {
        cli_error("cancel needs one job ID ([A-Za-z0-9_-]{1,64}; see kiln cancel --help)");
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_OK;
    char status[64] = "";
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    kiln_status st = kiln_client_cancel(c, a->positional[0], status, sizeof status);
    if (st != KILN_OK) {
        cli_error("cancel %s: %s", a->positional[0], cli_explain(st));
        rc = cli_exit_of(st);
        goto out;
    }
    if (a->cc.json) {
        if (cli_print_json(json_pack("{s:s, s:s}", "id", a->positional[0], "status", status)) != 0)
            rc = CLI_EXIT_UNAVAIL;
    } else {
        printf("id=%s status=%s\n", a->positional[0], status);
    }
    if (rc == CLI_EXIT_OK && strcmp(status, "cancelled") != 0) rc = CLI_EXIT_JOB;
out:
    kiln_client_destroy(c);
    return rc;
}
