/* common.c - what every `kiln` command uses: option parsing, exit codes and
 * error lines, the connection, and printing a job as a line or JSON. */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "config.h"
#include "jobreq.h"
#include "natsconn.h"
#include "pb.h"

#define CLI_LINE_MAX 8192

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kiln: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_exit_of(kiln_status st)
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

const char *cli_explain(kiln_status st)
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

json_t *cli_status_json(const Kiln__V1__JobStatus *st)
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

int cli_print_json(json_t *o)
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

int cli_print_status(const cli_common *cc, const Kiln__V1__JobStatus *st)
{
    if (cc->json) return cli_print_json(cli_status_json(st));
    char line[CLI_LINE_MAX];
    /* A truncated line (huge error message) is still worth printing. */
    (void)kiln_client_format_status(st, line, sizeof line);
    printf("%s\n", line);
    return 0;
}

kiln_client *cli_connect(const cli_common *cc, int *rc)
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

static const struct option cli_opts[] = {
    {"help", no_argument, NULL, 'h'},
    {"nats-url", required_argument, NULL, CLI_OPT_NATS_URL},
    {"json", no_argument, NULL, CLI_OPT_JSON},
    {"user", required_argument, NULL, CLI_OPT_USER},
    {"priority", required_argument, NULL, CLI_OPT_PRIORITY},
    {"n", required_argument, NULL, CLI_OPT_N},
    {"size", required_argument, NULL, CLI_OPT_SIZE},
    {"model", required_argument, NULL, CLI_OPT_MODEL},
    {"delay", required_argument, NULL, CLI_OPT_DELAY},
    {"id", required_argument, NULL, CLI_OPT_ID},
    {"job-timeout", required_argument, NULL, CLI_OPT_JOB_TIMEOUT},
    {"max-attempts", required_argument, NULL, CLI_OPT_MAX_ATTEMPTS},
    {"wait", no_argument, NULL, CLI_OPT_WAIT},
    {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},
    {"repeat", required_argument, NULL, CLI_OPT_REPEAT},
    {"limit", required_argument, NULL, CLI_OPT_LIMIT},
    {"cursor", required_argument, NULL, CLI_OPT_CURSOR},
    {"count", required_argument, NULL, CLI_OPT_COUNT},
    {"from", required_argument, NULL, CLI_OPT_FROM},
    {"reason", required_argument, NULL, CLI_OPT_REASON},
    {"all", no_argument, NULL, CLI_OPT_ALL},
    {NULL, 0, NULL, 0},
};

int cli_parse(int argc, char **argv, const char *usage, const int *allowed, size_t nallowed,
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
        int ok = (o == CLI_OPT_NATS_URL || o == CLI_OPT_JSON);
        for (size_t i = 0; i < nallowed && !ok; i++) ok = allowed[i] == o;
        if (!ok) {
            const char *name = "?";
            for (size_t i = 0; cli_opts[i].name != NULL; i++)
                if (cli_opts[i].val == o) name = cli_opts[i].name;
            cli_error("option --%s does not apply to this command (see --help)", name);
            return -1;
        }
        switch (o) {
        case CLI_OPT_NATS_URL: a->cc.nats_url = optarg; break;
        case CLI_OPT_JSON: a->cc.json = 1; break;
        case CLI_OPT_USER: a->user = optarg; break;
        case CLI_OPT_PRIORITY: a->priority = optarg; break;
        case CLI_OPT_SIZE: a->size = optarg; break;
        case CLI_OPT_MODEL: a->model = optarg; break;
        case CLI_OPT_ID: a->id = optarg; break;
        case CLI_OPT_CURSOR: a->cursor = optarg; break;
        case CLI_OPT_WAIT: a->wait = 1; break;
        case CLI_OPT_ALL: a->all = 1; break;
        case CLI_OPT_N:
            if (cli_int("n", optarg, 1, KILN_N_MAX, &a->n) != 0) return -1;
            break;
        case CLI_OPT_DELAY:
            if (cli_int("delay", optarg, 0, KILN_DELAY_MAX_MS, &a->delay_ms) != 0) return -1;
            break;
        case CLI_OPT_JOB_TIMEOUT:
            if (cli_int("job-timeout", optarg, 1, KILN_TIMEOUT_MAX_S, &a->job_timeout_s) != 0)
                return -1;
            break;
        case CLI_OPT_MAX_ATTEMPTS:
            if (cli_int("max-attempts", optarg, 1, KILN_ATTEMPTS_MAX, &a->max_attempts) != 0)
                return -1;
            break;
        case CLI_OPT_TIMEOUT:
            if (cli_int("timeout", optarg, 1, 7 * 86400, &a->timeout_s) != 0) return -1;
            a->have_timeout = 1;
            break;
        case CLI_OPT_REPEAT:
            if (cli_int("repeat", optarg, 1, CLI_REPEAT_MAX, &a->repeat) != 0) return -1;
            break;
        case CLI_OPT_LIMIT:
            if (cli_int("limit", optarg, 1, 200, &a->limit) != 0) return -1;
            break;
        case CLI_OPT_COUNT:
            if (cli_int("count", optarg, 1, INT64_MAX, &a->count) != 0) return -1;
            break;
        case CLI_OPT_REASON:
            a->reason = optarg;
            break;
        case CLI_OPT_FROM:
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

const char *cli_default_user(void)
{
    const char *u = getenv("KILN_USER");
    return (u != NULL && u[0] != '\0') ? u : CLI_DEFAULT_USER;
}
