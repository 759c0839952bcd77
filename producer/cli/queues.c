/* queues.c - `kiln stats` (lanes, the store's lag, dead letters, running
 * consumers) and `kiln pause` / `kiln resume` of a lane. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lanepause.h"

#define CLI_CONSUMERS_MAX 256     /* consumer processes kiln stats lists */
#define CLI_CONSUMERS_WAIT_MS 500 /* how long kiln stats waits for a first consumer */

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
    "  consumer id=HOST:PID:TAG in_flight=N/CONCURRENCY provider=ok|paused|tripped|held\n"
    "      completed=N failed=N retried=N [rate_per_s=R: its share of KILN_PROVIDER_RATE]\n"
    "      [paused_lanes=LANE,...]\n"
    "                           one line per running consumer process that answered\n"
    "                           (0.5 s for the first answer, then until 0.1 s pass\n"
    "                           without one); provider: paused while new calls wait\n"
    "                           out a 429's pause, tripped while the breaker holds\n"
    "                           calls back (its cool-downs included), held while\n"
    "                           another consumer's tripped breaker holds them back\n"
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

int cli_cmd_stats(int argc, char **argv, cli_args *a)
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
int cli_cmd_pause(int argc, char **argv, cli_args *a, int pause)
{
    static const int allowed[] = {CLI_OPT_REASON};
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
