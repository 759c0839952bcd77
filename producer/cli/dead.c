/* dead.c - `kiln dead`: list, retry and drop dead letters (jobs.dead). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "config.h"
#include "jobreq.h"

#define CLI_DEAD_PAGE 200 /* letters read per page by dead retry --all */

static const char cli_usage_dead[] =
    "usage: kiln dead [list] [--from SEQ] [--limit N] [--nats-url URL] [--json]\n"
    "       kiln dead retry SEQ | kiln dead retry --all | kiln dead drop SEQ\n"
    "Dead letters are the jobs.dead messages kept in stream KILN_DEAD (30 days): jobs\n"
    "that used up their attempts, invalid jobs, and bytes that were not a job.\n"
    "  list         one line per letter, oldest first:\n"
    "               seq=N at=TIME job=ID lane=LANE reason=TEXT (then next=SEQ when\n"
    "               more remain; with --json one object per letter, then {\"next\":SEQ})\n"
    "    --from SEQ   start at this sequence (default: the oldest)\n"
    "    --limit N    at most N letters, 1-200 (default 50)\n"
    "  retry SEQ    submit the letter's job again under a new id (same request, to\n"
    "               start now, no Idempotency-Key), print id=NEW, and remove the letter;\n"
    "               a letter that is not a valid job request is refused (exit 2)\n"
    "  retry --all  the same for every letter, oldest first: one id=NEW retry_of=SEQ line\n"
    "               each, seq=N status=skipped reason=TEXT for a letter that is no valid\n"
    "               job (it stays), then retried=N skipped=N\n"
    "  drop SEQ     remove the letter\n";

/* One dead letter as a line or a JSON object (payload as its size only). */
static int cli_print_letter(const cli_common *cc, const kiln_dead_letter *l)
{
    char at[32] = "-";
    if (l->at_ms > 0) kiln_rfc3339_ms(l->at_ms, at, sizeof at);
    if (cc->json)
        return cli_print_json(json_pack("{s:I, s:s, s:s, s:s, s:s, s:I}", "seq", (json_int_t)l->seq,
                                        "at", at, "job_id", l->job_id, "lane", l->lane, "reason",
                                        l->reason, "bytes", (json_int_t)l->len));
    printf("seq=%" PRIu64 " at=%s job=%s lane=%s reason=%s\n", l->seq, at, l->job_id[0] ? l->job_id : "-",
           l->lane[0] ? l->lane : "-", l->reason);
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

int cli_cmd_dead(int argc, char **argv, cli_args *a)
{
    static const int allowed[] = {CLI_OPT_FROM, CLI_OPT_LIMIT, CLI_OPT_ALL};
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
