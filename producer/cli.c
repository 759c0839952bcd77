/* cli.c - the `kiln` command-line client (submit, get, list, watch, cancel,
 * dead) over kiln_client.h. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "config.h"
#include "jobreq.h"
#include "natsconn.h"
#include "kiln_client.h"
#include "log.h"
#include "pb.h"

/* Exit codes (documented in --help). */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_JOB = 1,     /* job failed/cancelled, not found, already finished */
    CLI_EXIT_USAGE = 2,   /* bad arguments or invalid job */
    CLI_EXIT_UNAVAIL = 3, /* NATS or the store did not answer / other errors */
    CLI_EXIT_TIMEOUT = 4, /* --wait ran out of time */
};

#define CLI_DEFAULT_URL "nats://127.0.0.1:4222"
#define CLI_DEFAULT_USER "cli"
#define CLI_DEFAULT_WAIT_S 300
#define CLI_REPEAT_MAX 1000000
#define CLI_LINE_MAX 8192
#define CLI_DEAD_PAGE 200 /* letters read per page by dead retry --all */
#define CLI_CONSUMERS_MAX 256     /* consumer processes kiln stats lists */
#define CLI_CONSUMERS_WAIT_MS 500 /* how long kiln stats waits for a first consumer */

/* Options shared by every command. */
typedef struct {
    const char *nats_url;
    int json;
} cli_common;

static volatile sig_atomic_t cli_stop;

static void cli_on_signal(int sig)
{
    (void)sig;
    cli_stop = 1;
}

static const char cli_usage[] =
    "usage: kiln [--nats-url URL] [--json] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  submit PROMPT   publish a job (prints its id)\n"
    "  get ID          print a job's current state\n"
    "  list            print a user's jobs, newest first\n"
    "  watch           print every completion event (jobs.done) until Ctrl-C\n"
    "  cancel ID       cancel a pending or processing job\n"
    "  dead            list dead letters (jobs.dead); dead retry SEQ / dead drop SEQ\n"
    "  stats           print how many jobs wait and run in each lane, the store's lag\n"
    "                  and the number of dead letters\n"
    "  pause LANE      stop consumers fetching from a lane (high, normal, low or all)\n"
    "  resume LANE     let them fetch from it again\n"
    "\n"
    "common options (before or after the command):\n"
    "  --nats-url URL  NATS server(s), comma-separated (env KILN_NATS_URL, default " CLI_DEFAULT_URL ")\n"
    "  --json          print JSON objects instead of key=value lines\n"
    "  -h, --help      this text, or `kiln COMMAND --help`\n"
    "\n"
    "environment: KILN_NATS_URL, KILN_USER (default user, \"" CLI_DEFAULT_USER "\"), KILN_LOG_LEVEL (default warn)\n"
    "exit codes: 0 ok; 1 job failed/cancelled, not found or already finished; 2 usage or\n"
    "invalid job; 3 NATS or store unavailable (or another error); 4 timed out\n";

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

static const char cli_usage_dead[] =
    "usage: kiln dead [list] [--from SEQ] [--limit N] [--nats-url URL] [--json]\n"
    "       kiln dead retry SEQ | kiln dead retry --all | kiln dead drop SEQ\n"
    "Dead letters are the jobs.dead messages kept in stream KILN_DEAD (30 days): jobs\n"
    "that used up their attempts, invalid jobs, and bytes that were not a job.\n"
    "  list         one line per letter, oldest first:\n"
    "               seq=N at=TIME job=ID reason=TEXT (then next=SEQ when more remain;\n"
    "               with --json one object per letter, then {\"next\":SEQ})\n"
    "    --from SEQ   start at this sequence (default: the oldest)\n"
    "    --limit N    at most N letters, 1-200 (default 50)\n"
    "  retry SEQ    submit the letter's job again under a new id (same request, to\n"
    "               start now, no Idempotency-Key), print id=NEW, and remove the letter;\n"
    "               a letter that is not a valid job request is refused (exit 2)\n"
    "  retry --all  the same for every letter, oldest first: one id=NEW retry_of=SEQ line\n"
    "               each, seq=N status=skipped reason=TEXT for a letter that is no valid\n"
    "               job (it stays), then retried=N skipped=N\n"
    "  drop SEQ     remove the letter\n";

static const char cli_usage_stats[] =
    "usage: kiln stats [--nats-url URL] [--json]\n"
    "Queue depths from JetStream's own accounting, one line each:\n"
    "  lane=high|normal|low waiting=N oldest_waiting_ms=N held=N redelivered=N [paused]\n"
    "      waiting: not yet handed to a worker (oldest_waiting_ms: how long the\n"
    "      oldest of them has waited, 0 when none); held: a worker has it (running,\n"
    "      fetched, or waiting for its delay or its next attempt); redelivered: of\n"
    "      held, delivered more than once; paused: see kiln pause\n"
    "  store waiting=N held=N   job requests and transitions not yet applied\n"
    "  dead_letters=N           messages in KILN_DEAD (see kiln dead)\n"
    "  consumer id=HOST:PID:TAG in_flight=N/CONCURRENCY provider=ok|paused|tripped\n"
    "      completed=N failed=N retried=N [rate_per_s=R: its share of KILN_PROVIDER_RATE]\n"
    "      [paused_lanes=LANE,...]\n"
    "                           one line per running consumer process that answered\n"
    "                           (0.5 s for the first answer, then until 0.1 s pass\n"
    "                           without one); provider: paused while new calls wait\n"
    "                           out a 429's pause, tripped while the breaker holds\n"
    "                           calls back (its cool-downs included)\n"
    "                           (README: Provider back-pressure)\n"
    "  consumers=N              how many answered (\"consumers unknown\" when NATS\n"
    "                           failed the request; the figures above still stand)\n"
    "A lane no consumer has created yet prints absent instead of figures.\n"
    "--json prints one object: {\"lanes\":{\"high\":{...},...},\"store\":{...},\"dead_letters\":N,\n"
    "\"consumers\":[{\"id\",\"started_at_ms\",\"concurrency\",\"in_flight\",\"provider\",\n"
    "\"provider_rate_per_s\",\"paused_lanes\":[...],\"completed\",\"failed\",\"retried\"},...]}\n";

static const char cli_usage_pause[] =
    "usage: kiln pause LANE [--reason TEXT] [--nats-url URL] [--json]\n"
    "       kiln resume LANE\n"
    "LANE is high, normal, low or all. While a lane is paused no consumer fetches\n"
    "from it (within about half a second); jobs already running finish, new jobs are\n"
    "accepted and wait. The state is kept in NATS (bucket KILN_CONTROL) across\n"
    "restarts. Prints lane=NAME status=paused|resumed per lane.\n"
    "  --reason TEXT  shown by consumers' logs when they see the pause (at most 200 bytes)\n";

static void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kiln: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Exit code for a library status. */
static int cli_exit_of(kiln_status st)
{
    switch (st) {
    case KILN_OK: return CLI_EXIT_OK;
    case KILN_ENOTFOUND:
    case KILN_ECONFLICT: return CLI_EXIT_JOB;
    case KILN_EINVAL: return CLI_EXIT_USAGE;
    case KILN_ETIMEOUT: return CLI_EXIT_TIMEOUT;
    default: return CLI_EXIT_UNAVAIL;
    }
}

static const char *cli_explain(kiln_status st)
{
    switch (st) {
    case KILN_ENOTFOUND: return "job not found";
    case KILN_ETIMEOUT: return "timed out waiting for an answer";
    case KILN_EUNAVAILABLE: return "NATS or the Kiln store is unavailable (is kiln-store running?)";
    case KILN_EINVAL: return "invalid argument";
    case KILN_ECONFLICT: return "conflict";
    default: return kiln_status_str(st);
    }
}

/* Parses an integer option in [min, max]; prints the error itself. */
static int cli_int(const char *opt, const char *text, int64_t min, int64_t max, int64_t *out)
{
    int64_t v = 0;
    if (kiln_config_parse_int(text, &v) != KILN_OK || v < min || v > max) {
        cli_error("--%s must be an integer between %" PRId64 " and %" PRId64 ", got \"%s\"", opt,
                  min, max, text);
        return -1;
    }
    *out = v;
    return 0;
}

static json_t *cli_json_time(int64_t ms)
{
    if (ms <= 0) return json_null();
    char ts[32];
    kiln_rfc3339_ms(ms, ts, sizeof ts);
    return json_string(ts);
}

/* JSON object of a status, or NULL on allocation failure. */
static json_t *cli_status_json(const Kiln__V1__JobStatus *st)
{
    json_t *images = json_array();
    json_t *o = NULL;
    if (images == NULL) return NULL;
    for (size_t i = 0; i < st->n_images; i++) {
        const Kiln__V1__Image *im = st->images[i];
        if (im == NULL) continue;
        json_t *j = json_pack("{s:I, s:s, s:s}", "index", (json_int_t)im->index, "url",
                              im->url ? im->url : "", "content_type",
                              im->content_type ? im->content_type : "");
        if (j == NULL || json_array_append_new(images, j) != 0) {
            json_decref(images);
            return NULL;
        }
    }
    json_t *err = json_null();
    if (st->error != NULL && st->error->code != NULL && st->error->code[0] != '\0')
        err = json_pack("{s:s, s:s}", "code", st->error->code, "message",
                        st->error->message ? st->error->message : "");
    /* "o" steals images/err/time references, also on failure. */
    o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:o, s:o, s:o, s:o, s:o}", "id",
                  st->id ? st->id : "", "user_id", st->user_id ? st->user_id : "", "status",
                  kiln_state_name(st->state), "prompt", st->prompt ? st->prompt : "", "attempts",
                  (json_int_t)st->attempts, "images", images, "error",
                  err != NULL ? err : json_null(), "created_at", cli_json_time(st->created_at_ms),
                  "started_at", cli_json_time(st->started_at_ms), "completed_at",
                  cli_json_time(st->completed_at_ms));
    return o;
}

static int cli_print_json(json_t *o)
{
    if (o == NULL) {
        cli_error("out of memory");
        return -1;
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) {
        cli_error("out of memory");
        return -1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

/* Prints one job as a key=value line or a JSON object. */
static int cli_print_status(const cli_common *cc, const Kiln__V1__JobStatus *st)
{
    if (cc->json) return cli_print_json(cli_status_json(st));
    char line[CLI_LINE_MAX];
    /* A truncated line (huge error message) is still worth printing. */
    (void)kiln_client_format_status(st, line, sizeof line);
    printf("%s\n", line);
    return 0;
}

static kiln_client *cli_connect(const cli_common *cc, int *rc)
{
    kiln_client *c = NULL;
    char why[160], shown[512];
    if (kiln_nats_urls_check(cc->nats_url, why, sizeof why) != KILN_OK) {
        cli_error("the NATS server list (--nats-url or KILN_NATS_URL) %s", why);
        *rc = CLI_EXIT_USAGE;
        return NULL;
    }
    kiln_status st = kiln_client_connect(cc->nats_url, &c);
    if (st != KILN_OK) {
        kiln_nats_urls_redact(cc->nats_url, shown, sizeof shown); /* may hold a password */
        cli_error("cannot connect to NATS at %s: %s", shown, kiln_status_str(st));
        *rc = st == KILN_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_UNAVAIL;
        return NULL;
    }
    return c;
}

/* Option ids above the char range for long-only options. */
enum {
    OPT_NATS_URL = 256,
    OPT_JSON,
    OPT_USER,
    OPT_PRIORITY,
    OPT_N,
    OPT_SIZE,
    OPT_MODEL,
    OPT_DELAY,
    OPT_ID,
    OPT_JOB_TIMEOUT,
    OPT_MAX_ATTEMPTS,
    OPT_WAIT,
    OPT_TIMEOUT,
    OPT_REPEAT,
    OPT_LIMIT,
    OPT_CURSOR,
    OPT_COUNT,
    OPT_FROM,
    OPT_REASON,
    OPT_ALL,
};

static const struct option cli_opts[] = {
    {"help", no_argument, NULL, 'h'},
    {"nats-url", required_argument, NULL, OPT_NATS_URL},
    {"json", no_argument, NULL, OPT_JSON},
    {"user", required_argument, NULL, OPT_USER},
    {"priority", required_argument, NULL, OPT_PRIORITY},
    {"n", required_argument, NULL, OPT_N},
    {"size", required_argument, NULL, OPT_SIZE},
    {"model", required_argument, NULL, OPT_MODEL},
    {"delay", required_argument, NULL, OPT_DELAY},
    {"id", required_argument, NULL, OPT_ID},
    {"job-timeout", required_argument, NULL, OPT_JOB_TIMEOUT},
    {"max-attempts", required_argument, NULL, OPT_MAX_ATTEMPTS},
    {"wait", no_argument, NULL, OPT_WAIT},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"repeat", required_argument, NULL, OPT_REPEAT},
    {"limit", required_argument, NULL, OPT_LIMIT},
    {"cursor", required_argument, NULL, OPT_CURSOR},
    {"count", required_argument, NULL, OPT_COUNT},
    {"from", required_argument, NULL, OPT_FROM},
    {"reason", required_argument, NULL, OPT_REASON},
    {"all", no_argument, NULL, OPT_ALL},
    {NULL, 0, NULL, 0},
};

/* Everything any command may set; each command rejects options it does not take. */
typedef struct {
    cli_common cc;
    const char *user;
    const char *priority;
    const char *size;
    const char *model;
    const char *id;
    const char *cursor;
    const char *reason;
    int64_t n, delay_ms, job_timeout_s, max_attempts, timeout_s, repeat, limit, count, from;
    int wait;
    int all;
    int have_timeout;
    const char *positional[2];
    int npositional;
} cli_args;

/* Parses argv[1..] of one command. allowed lists the option ids it takes.
 * Returns 0, 1 after printing help, or -1 after printing an error. */
static int cli_parse(int argc, char **argv, const char *usage, const int *allowed, size_t nallowed,
                     int max_positional, cli_args *a)
{
    optind = 0; /* glibc: full re-initialisation for a fresh getopt pass */
    opterr = 0;
    int o;
    /* GNU getopt permutes: operands may come before, between or after options;
     * "--" ends the options (for a prompt that starts with '-'). */
    while ((o = getopt_long(argc, argv, "h", cli_opts, NULL)) != -1) {
        if (o == 'h') {
            fputs(usage, stdout);
            return 1;
        }
        if (o == '?' || o == ':') {
            cli_error("unknown option or missing value: \"%s\" (see --help)", argv[optind - 1]);
            return -1;
        }
        int ok = (o == OPT_NATS_URL || o == OPT_JSON);
        for (size_t i = 0; i < nallowed && !ok; i++) ok = allowed[i] == o;
        if (!ok) {
            const char *name = "?";
            for (size_t i = 0; cli_opts[i].name != NULL; i++)
                if (cli_opts[i].val == o) name = cli_opts[i].name;
            cli_error("option --%s does not apply to this command (see --help)", name);
            return -1;
        }
        switch (o) {
        case OPT_NATS_URL: a->cc.nats_url = optarg; break;
        case OPT_JSON: a->cc.json = 1; break;
        case OPT_USER: a->user = optarg; break;
        case OPT_PRIORITY: a->priority = optarg; break;
        case OPT_SIZE: a->size = optarg; break;
        case OPT_MODEL: a->model = optarg; break;
        case OPT_ID: a->id = optarg; break;
        case OPT_CURSOR: a->cursor = optarg; break;
        case OPT_WAIT: a->wait = 1; break;
        case OPT_ALL: a->all = 1; break;
        case OPT_N:
            if (cli_int("n", optarg, 1, KILN_N_MAX, &a->n) != 0) return -1;
            break;
        case OPT_DELAY:
            if (cli_int("delay", optarg, 0, KILN_DELAY_MAX_MS, &a->delay_ms) != 0) return -1;
            break;
        case OPT_JOB_TIMEOUT:
            if (cli_int("job-timeout", optarg, 1, KILN_TIMEOUT_MAX_S, &a->job_timeout_s) != 0)
                return -1;
            break;
        case OPT_MAX_ATTEMPTS:
            if (cli_int("max-attempts", optarg, 1, KILN_ATTEMPTS_MAX, &a->max_attempts) != 0)
                return -1;
            break;
        case OPT_TIMEOUT:
            if (cli_int("timeout", optarg, 1, 7 * 86400, &a->timeout_s) != 0) return -1;
            a->have_timeout = 1;
            break;
        case OPT_REPEAT:
            if (cli_int("repeat", optarg, 1, CLI_REPEAT_MAX, &a->repeat) != 0) return -1;
            break;
        case OPT_LIMIT:
            if (cli_int("limit", optarg, 1, 200, &a->limit) != 0) return -1;
            break;
        case OPT_COUNT:
            if (cli_int("count", optarg, 1, INT64_MAX, &a->count) != 0) return -1;
            break;
        case OPT_REASON:
            a->reason = optarg;
            break;
        case OPT_FROM:
            if (cli_int("from", optarg, 1, INT64_MAX, &a->from) != 0) return -1;
            break;
        default: break;
        }
    }
    for (; optind < argc; optind++) {
        if (a->npositional >= max_positional) {
            cli_error("unexpected argument \"%s\" (see --help)", argv[optind]);
            return -1;
        }
        a->positional[a->npositional++] = argv[optind];
    }
    return 0;
}

static const char *cli_default_user(void)
{
    const char *u = getenv("KILN_USER");
    return (u != NULL && u[0] != '\0') ? u : CLI_DEFAULT_USER;
}

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

static int cli_cmd_submit(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {OPT_USER,         OPT_PRIORITY,     OPT_N,    OPT_SIZE,
                                  OPT_MODEL,        OPT_DELAY,        OPT_ID,   OPT_JOB_TIMEOUT,
                                  OPT_MAX_ATTEMPTS, OPT_WAIT,         OPT_TIMEOUT, OPT_REPEAT};
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

static int cli_cmd_get(int argc, char **argv, cli_args *a)
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

static int cli_cmd_list(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {OPT_USER, OPT_LIMIT, OPT_CURSOR};
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

static int cli_cmd_watch(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {OPT_USER, OPT_COUNT, OPT_TIMEOUT};
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

static int cli_cmd_cancel(int argc, char **argv, cli_args *a)
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

/* One dead letter as a line or a JSON object (payload as its size only). */
static int cli_print_letter(const cli_common *cc, const kiln_dead_letter *l)
{
    char at[32] = "-";
    if (l->at_ms > 0) kiln_rfc3339_ms(l->at_ms, at, sizeof at);
    if (cc->json)
        return cli_print_json(json_pack("{s:I, s:s, s:s, s:s, s:I}", "seq", (json_int_t)l->seq,
                                        "at", at, "job_id", l->job_id, "reason", l->reason,
                                        "bytes", (json_int_t)l->len));
    printf("seq=%" PRIu64 " at=%s job=%s reason=%s\n", l->seq, at, l->job_id[0] ? l->job_id : "-",
           l->reason);
    return 0;
}

static int cli_dead_list(kiln_client *c, const cli_args *a)
{
    kiln_dead_letter *letters = NULL;
    size_t n = 0;
    uint64_t next = 0;
    kiln_status st = kiln_client_dead_list(c, (uint64_t)a->from, a->limit > 0 ? (size_t)a->limit : 50,
                                           &letters, &n, &next);
    if (st != KILN_OK) {
        cli_error("dead letters: %s", cli_explain(st));
        return cli_exit_of(st);
    }
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; i < n && rc == CLI_EXIT_OK; i++)
        if (cli_print_letter(&a->cc, &letters[i]) != 0) rc = CLI_EXIT_UNAVAIL;
    if (rc == CLI_EXIT_OK && next > 0) {
        if (!a->cc.json)
            printf("next=%" PRIu64 "\n", next);
        else if (cli_print_json(json_pack("{s:I}", "next", (json_int_t)next)) != 0)
            rc = CLI_EXIT_UNAVAIL;
    }
    kiln_dead_letters_free(letters, n);
    return rc;
}

/* The line of a letter whose job was submitted again as id (err: a
 * warning that the letter stayed, or ""). CLI_EXIT_OK unless printing failed. */
static int cli_print_retried(const cli_common *cc, const char *id, uint64_t seq, const char *err)
{
    if (err[0] != '\0') cli_error("%s", err); /* submitted; the letter stayed */
    if (cc->json)
        return cli_print_json(json_pack("{s:s, s:I}", "id", id, "retry_of", (json_int_t)seq))
                   ? CLI_EXIT_UNAVAIL
                   : CLI_EXIT_OK;
    printf("id=%s retry_of=%" PRIu64 "\n", id, seq);
    return CLI_EXIT_OK;
}

/* retry or drop of letter seq. */
static int cli_dead_one(kiln_client *c, const cli_args *a, int retry, uint64_t seq)
{
    char id[KILN_ID_MAX_LEN + 1] = "", err[512] = "";
    kiln_status st = retry ? kiln_client_dead_retry(c, seq, id, sizeof id, err, sizeof err)
                           : kiln_client_dead_drop(c, seq);
    if (st == KILN_ENOTFOUND) {
        cli_error("no dead letter %" PRIu64 " (see kiln dead list)", seq);
        return CLI_EXIT_JOB;
    }
    if (st != KILN_OK) {
        cli_error("dead %s %" PRIu64 ": %s", retry ? "retry" : "drop", seq,
                  err[0] ? err : cli_explain(st));
        return cli_exit_of(st);
    }
    if (!retry) {
        if (a->cc.json)
            return cli_print_json(json_pack("{s:I, s:s}", "seq", (json_int_t)seq, "status", "dropped"))
                       ? CLI_EXIT_UNAVAIL : CLI_EXIT_OK;
        printf("seq=%" PRIu64 " status=dropped\n", seq);
        return CLI_EXIT_OK;
    }
    return cli_print_retried(&a->cc, id, seq, err);
}

/* kiln dead retry --all: every letter, page by page (retried letters are
 * removed, so each page starts where the last one ended). */
static int cli_dead_retry_all(kiln_client *c, const cli_args *a)
{
    uint64_t from = 1;
    long long retried = 0, skipped = 0;
    int rc = CLI_EXIT_OK;
    while (from > 0 && rc == CLI_EXIT_OK) {
        kiln_dead_letter *letters = NULL;
        size_t n = 0;
        uint64_t next = 0;
        kiln_status st = kiln_client_dead_list(c, from, CLI_DEAD_PAGE, &letters, &n, &next);
        if (st != KILN_OK) {
            cli_error("dead letters: %s", cli_explain(st));
            return cli_exit_of(st);
        }
        for (size_t i = 0; i < n && rc == CLI_EXIT_OK; i++) {
            char id[KILN_ID_MAX_LEN + 1] = "", err[512] = "";
            uint64_t seq = letters[i].seq;
            st = kiln_client_dead_retry(c, seq, id, sizeof id, err, sizeof err);
            if (st == KILN_ENOTFOUND) continue; /* dropped meanwhile */
            if (st == KILN_EINVAL) {
                skipped++;
                if (a->cc.json)
                    rc = cli_print_json(json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)seq,
                                                  "status", "skipped", "reason", err))
                             ? CLI_EXIT_UNAVAIL : CLI_EXIT_OK;
                else
                    printf("seq=%" PRIu64 " status=skipped reason=%s\n", seq, err);
                continue;
            }
            if (st != KILN_OK) {
                cli_error("dead retry %" PRIu64 ": %s", seq, err[0] ? err : cli_explain(st));
                rc = cli_exit_of(st);
                break;
            }
            retried++;
            rc = cli_print_retried(&a->cc, id, seq, err);
        }
        kiln_dead_letters_free(letters, n);
        from = next;
    }
    if (a->cc.json) {
        if (cli_print_json(json_pack("{s:I, s:I}", "retried", (json_int_t)retried, "skipped",
                                     (json_int_t)skipped)) != 0 && rc == CLI_EXIT_OK)
            rc = CLI_EXIT_UNAVAIL;
    } else {
        printf("retried=%lld skipped=%lld\n", retried, skipped);
    }
    return rc;
}

static int cli_cmd_dead(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {OPT_FROM, OPT_LIMIT, OPT_ALL};
    int r = cli_parse(argc, argv, cli_usage_dead, allowed, sizeof allowed / sizeof allowed[0], 2, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    const char *sub = a->npositional > 0 ? a->positional[0] : "list";
    int list = strcmp(sub, "list") == 0, retry = strcmp(sub, "retry") == 0;
    if (!list && !retry && strcmp(sub, "drop") != 0) {
        cli_error("dead takes list, retry SEQ or drop SEQ, got \"%s\" (see kiln dead --help)", sub);
        return CLI_EXIT_USAGE;
    }
    int64_t seq = 0;
    if (a->all && (!retry || a->npositional != 1 || a->from > 0 || a->limit > 0)) {
        cli_error("--all goes with dead retry alone, without SEQ, --from or --limit");
        return CLI_EXIT_USAGE;
    }
    if (list && a->npositional > 1) {
        cli_error("dead list takes no argument (see kiln dead --help)");
        return CLI_EXIT_USAGE;
    }
    if (!list && !a->all && (a->npositional != 2 || kiln_config_parse_int(a->positional[1], &seq) != KILN_OK ||
                  seq < 1)) {
        cli_error("dead %s needs one SEQ, a sequence number from kiln dead list", sub);
        return CLI_EXIT_USAGE;
    }
    if (!list && (a->from > 0 || a->limit > 0)) {
        cli_error("--from and --limit apply to dead list only");
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_OK;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    rc = list ? cli_dead_list(c, a) : a->all ? cli_dead_retry_all(c, a)
                                             : cli_dead_one(c, a, retry, (uint64_t)seq);
    kiln_client_destroy(c);
    return rc;
}

/* One durable's figures as a JSON object (a lane's with its pause and
 * oldest waiting job), or null when it does not exist. */
static json_t *cli_durable_json(const kiln_queue_durable *d, bool lane)
{
    if (!d->present) return json_null();
    json_t *o = json_pack("{s:I, s:I, s:I}", "waiting", (json_int_t)d->waiting, "held",
                          (json_int_t)d->held, "redelivered", (json_int_t)d->redelivered);
    if (o != NULL && lane) {
        json_object_set_new(o, "oldest_waiting_ms", json_integer((json_int_t)d->oldest_waiting_ms));
        json_object_set_new(o, "paused", json_boolean(d->paused));
    }
    return o;
}

static json_t *cli_consumer_json(const kiln_consumer_info *ci)
{
    json_t *paused = json_array();
    for (int i = 0; paused != NULL && i < KILN_LANES; i++)
        if (ci->lane_paused[i]) json_array_append_new(paused, json_string(kiln_lanes[i].name));
    return json_pack("{s:s, s:I, s:I, s:I, s:s, s:f, s:o*, s:I, s:I, s:I}", "id", ci->id,
                     "started_at_ms", (json_int_t)ci->started_at_ms, "concurrency",
                     (json_int_t)ci->concurrency, "in_flight", (json_int_t)ci->in_flight,
                     "provider", ci->provider, "provider_rate_per_s", ci->provider_rate_per_s,
                     "paused_lanes", paused, "completed", (json_int_t)ci->jobs_completed,
                     "failed", (json_int_t)ci->jobs_failed, "retried",
                     (json_int_t)ci->jobs_retried);
}

static void cli_print_consumer(const kiln_consumer_info *ci)
{
    char paused[64] = "";
    for (int i = 0; i < KILN_LANES; i++) {
        if (!ci->lane_paused[i]) continue;
        size_t used = strlen(paused);
        snprintf(paused + used, sizeof paused - used, "%s%s",
                 used == 0 ? " paused_lanes=" : ",", kiln_lanes[i].name);
    }
    char rate[48] = "";
    if (ci->provider_rate_per_s > 0)
        snprintf(rate, sizeof rate, " rate_per_s=%g", ci->provider_rate_per_s);
    printf("consumer id=%s in_flight=%" PRId64 "/%" PRId64 " provider=%s completed=%" PRId64
           " failed=%" PRId64 " retried=%" PRId64 "%s%s\n",
           ci->id, ci->in_flight, ci->concurrency, ci->provider, ci->jobs_completed,
           ci->jobs_failed, ci->jobs_retried, rate, paused);
}

/* cons NULL: the consumers could not be asked. */
static int cli_print_stats(const cli_common *cc, const kiln_queue_stats *qs,
                           const kiln_consumer_info *cons, size_t ncons, size_t answered)
{
    if (cc->json) {
        json_t *lanes = json_object();
        for (int i = 0; lanes != NULL && i < KILN_LANES; i++)
            json_object_set_new(lanes, kiln_lanes[i].name, cli_durable_json(&qs->lanes[i], true));
        json_t *dead = qs->dead_present ? json_integer((json_int_t)qs->dead_letters) : json_null();
        json_t *consumers = cons != NULL ? json_array() : NULL;
        for (size_t k = 0; consumers != NULL && k < ncons; k++)
            json_array_append_new(consumers, cli_consumer_json(&cons[k]));
        return cli_print_json(json_pack("{s:o*, s:o, s:o*, s:o}", "lanes", lanes, "store",
                                        cli_durable_json(&qs->store, false), "dead_letters", dead,
                                        "consumers", consumers != NULL ? consumers : json_null()));
    }
    for (int i = 0; i < KILN_LANES; i++) {
        const kiln_queue_durable *d = &qs->lanes[i];
        if (!d->present) {
            printf("lane=%s absent\n", kiln_lanes[i].name);
            continue;
        }
        printf("lane=%s waiting=%" PRIu64 " oldest_waiting_ms=%" PRId64 " held=%" PRId64
               " redelivered=%" PRId64 "%s\n",
               kiln_lanes[i].name, d->waiting, d->oldest_waiting_ms, d->held, d->redelivered,
               d->paused ? " paused" : "");
    }
    if (qs->store.present)
        printf("store waiting=%" PRIu64 " held=%" PRId64 "\n", qs->store.waiting, qs->store.held);
    else
        printf("store absent\n");
    if (qs->dead_present)
        printf("dead_letters=%" PRIu64 "\n", qs->dead_letters);
    else
        printf("dead_letters absent\n");
    if (cons == NULL) {
        printf("consumers unknown\n");
        return 0;
    }
    for (size_t k = 0; k < ncons; k++) cli_print_consumer(&cons[k]);
    if (answered > ncons)
        printf("consumers=%zu (%zu listed)\n", answered, ncons);
    else
        printf("consumers=%zu\n", answered);
    return 0;
}

static int cli_cmd_stats(int argc, char **argv, cli_args *a)
{
    int r = cli_parse(argc, argv, cli_usage_stats, NULL, 0, 0, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    int rc = CLI_EXIT_OK;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    kiln_queue_stats qs;
    static kiln_consumer_info cons[CLI_CONSUMERS_MAX];
    size_t ncons = 0, answered = 0;
    kiln_status st = kiln_client_stats(c, &qs);
    if (st != KILN_OK) {
        cli_error("stats: %s", cli_explain(st));
        rc = cli_exit_of(st);
    } else {
        /* The queue figures stand even when the consumers cannot be asked. */
        kiln_status cst = kiln_client_consumers(c, CLI_CONSUMERS_WAIT_MS, cons, CLI_CONSUMERS_MAX,
                                                &ncons, &answered);
        if (cst != KILN_OK) cli_error("stats: consumers: %s", cli_explain(cst));
        if (cli_print_stats(&a->cc, &qs, cst == KILN_OK ? cons : NULL, ncons, answered) != 0)
            rc = CLI_EXIT_UNAVAIL;
    }
    kiln_client_destroy(c);
    return rc;
}

/* kiln pause / kiln resume. */
static int cli_cmd_pause(int argc, char **argv, cli_args *a, int pause)
{
    static const int allowed[] = {OPT_REASON};
    int r = cli_parse(argc, argv, cli_usage_pause, allowed, pause ? 1 : 0, 1, a);
    if (r != 0) return r > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
    const char *name = a->npositional == 1 ? a->positional[0] : "";
    int lane = kiln_lane_index(name), all = strcmp(name, "all") == 0;
    if (lane < 0 && !all) {
        cli_error("%s needs one LANE: high, normal, low or all (see kiln pause --help)",
                  pause ? "pause" : "resume");
        return CLI_EXIT_USAGE;
    }
    if (a->reason != NULL && strlen(a->reason) > KILN_PAUSE_REASON_MAX) {
        cli_error("--reason is longer than %d bytes", KILN_PAUSE_REASON_MAX);
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_OK;
    kiln_client *c = cli_connect(&a->cc, &rc);
    if (c == NULL) return rc;
    int first = all ? 0 : lane, last = all ? KILN_LANES - 1 : lane;
    const char *status = pause ? "paused" : "resumed";
    for (int i = first; i <= last && rc == CLI_EXIT_OK; i++) {
        kiln_status st = kiln_client_pause(c, i, pause, a->reason);
        if (st != KILN_OK) {
            cli_error("%s %s: %s", pause ? "pause" : "resume", kiln_lanes[i].name, cli_explain(st));
            rc = cli_exit_of(st);
        } else if (a->cc.json) {
            if (cli_print_json(json_pack("{s:s, s:s}", "lane", kiln_lanes[i].name, "status", status)))
                rc = CLI_EXIT_UNAVAIL;
        } else {
            printf("lane=%s status=%s\n", kiln_lanes[i].name, status);
        }
    }
    kiln_client_destroy(c);
    return rc;
}

int main(int argc, char **argv)
{
    cli_args a;
    memset(&a, 0, sizeof a);
    kiln_log_init("kiln");
    const char *lvl = getenv("KILN_LOG_LEVEL");
    if (kiln_log_set_level(lvl != NULL && lvl[0] != '\0' ? lvl : "warn") != KILN_OK) {
        cli_error("KILN_LOG_LEVEL must be debug, info, warn or error, got \"%s\"", lvl);
        return CLI_EXIT_USAGE;
    }
    const char *url = getenv("KILN_NATS_URL");
    a.cc.nats_url = (url != NULL && url[0] != '\0') ? url : CLI_DEFAULT_URL;

    /* Common options may come before the command. */
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(cli_usage, stdout);
            return CLI_EXIT_OK;
        } else if (strcmp(argv[i], "--json") == 0) {
            a.cc.json = 1;
        } else if (strcmp(argv[i], "--nats-url") == 0 && i + 1 < argc) {
            a.cc.nats_url = argv[++i];
        } else if (strncmp(argv[i], "--nats-url=", 11) == 0) {
            a.cc.nats_url = argv[i] + 11;
        } else {
            cli_error("unknown option \"%s\" (see kiln --help)", argv[i]);
            return CLI_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        fputs(cli_usage, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[i];
    /* The command's own argv: argv[0] is the command name. */
    int cargc = argc - i;
    char **cargv = argv + i;
    if (strcmp(cmd, "submit") == 0) return cli_cmd_submit(cargc, cargv, &a);
    if (strcmp(cmd, "get") == 0) return cli_cmd_get(cargc, cargv, &a);
    if (strcmp(cmd, "list") == 0) return cli_cmd_list(cargc, cargv, &a);
    if (strcmp(cmd, "watch") == 0) return cli_cmd_watch(cargc, cargv, &a);
    if (strcmp(cmd, "cancel") == 0) return cli_cmd_cancel(cargc, cargv, &a);
    if (strcmp(cmd, "dead") == 0) return cli_cmd_dead(cargc, cargv, &a);
    if (strcmp(cmd, "stats") == 0) return cli_cmd_stats(cargc, cargv, &a);
    if (strcmp(cmd, "pause") == 0) return cli_cmd_pause(cargc, cargv, &a, 1);
    if (strcmp(cmd, "resume") == 0) return cli_cmd_pause(cargc, cargv, &a, 0);
    if (strcmp(cmd, "help") == 0) {
        fputs(cli_usage, stdout);
        return CLI_EXIT_OK;
    }
    cli_error("unknown command \"%s\" (see kiln --help)", cmd);
    return CLI_EXIT_USAGE;
}
