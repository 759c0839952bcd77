/* cli.h - what the `kiln` command-line client's files share: exit codes,
 * the parsed command line, error and output helpers (cli/common.c), and one
 * entry point per command (cli/jobs.c, cli/dead.c, cli/queues.c). Uses
 * only the public client library, kiln_client.h. */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include <jansson.h>
#include <stdint.h>

#include "kiln_client.h"
#include "status.h"

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
#define CLI_REPEAT_MAX 1000000

/* Options shared by every command. */
typedef struct {
    const char *nats_url;
    int json;
} cli_common;

/* Option ids above the char range for long-only options. */
enum {
    CLI_OPT_NATS_URL = 256,
    CLI_OPT_JSON,
    CLI_OPT_USER,
    CLI_OPT_PRIORITY,
    CLI_OPT_N,
    CLI_OPT_SIZE,
    CLI_OPT_MODEL,
    CLI_OPT_DELAY,
    CLI_OPT_ID,
    CLI_OPT_JOB_TIMEOUT,
    CLI_OPT_MAX_ATTEMPTS,
    CLI_OPT_WAIT,
    CLI_OPT_TIMEOUT,
    CLI_OPT_REPEAT,
    CLI_OPT_LIMIT,
    CLI_OPT_CURSOR,
    CLI_OPT_COUNT,
    CLI_OPT_FROM,
    CLI_OPT_REASON,
    CLI_OPT_ALL,
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

/* ---- common.c ------------------------------------------------------------ */

void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cli_exit_of(kiln_status st);         /* exit code for a library status */
const char *cli_explain(kiln_status st); /* a status in words for an error line */
/* JSON object of a status, or NULL on allocation failure. */
json_t *cli_status_json(const Kiln__V1__JobStatus *st);
/* Prints o (taken over; NULL: out of memory) compactly on one line; -1 on failure. */
int cli_print_json(json_t *o);
/* Prints one job as a key=value line or a JSON object. */
int cli_print_status(const cli_common *cc, const Kiln__V1__JobStatus *st);
/* Connects to NATS; NULL with *rc set to the exit code (the error printed). */
kiln_client *cli_connect(const cli_common *cc, int *rc);
/* Parses argv[1..] of one command. allowed lists the option ids it takes.
 * Returns 0, 1 after printing help, or -1 after printing an error. */
int cli_parse(int argc, char **argv, const char *usage, const int *allowed, size_t nallowed,
              int max_positional, cli_args *a);
const char *cli_default_user(void); /* KILN_USER, or CLI_DEFAULT_USER */

/* ---- the commands: argv[0] is the command's name; each returns its exit code */

int cli_cmd_submit(int argc, char **argv, cli_args *a);
int cli_cmd_get(int argc, char **argv, cli_args *a);
int cli_cmd_list(int argc, char **argv, cli_args *a);
int cli_cmd_watch(int argc, char **argv, cli_args *a);
int cli_cmd_cancel(int argc, char **argv, cli_args *a);
int cli_cmd_dead(int argc, char **argv, cli_args *a);
int cli_cmd_stats(int argc, char **argv, cli_args *a);
int cli_cmd_pause(int argc, char **argv, cli_args *a, int pause); /* pause 0: resume */

#endif
