/* main.c - the `kiln` command-line client (submit, get, list, watch, cancel,
 * dead, stats, pause, resume) over kiln_client.h: common options, then one
 * command (cli/jobs.c, cli/dead.c, cli/queues.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"

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
