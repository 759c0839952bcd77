/* test_natsconn.c - the initial connect's retry wait and stop signals: only
 * a daemon that opted in (kiln_nats_stop_on_signals) has its SIGTERM taken
 * there; the client library never takes a signal of the program that links it.
 * Each Criterion test runs in a process of its own, so the opt-in of one test
 * does not reach another. */
#include <criterion/criterion.h>
#include <signal.h>
#include <time.h>

#include "clock.h"
#include "natsconn.h"

/* Nothing listens on port 1: every connect try fails and is retried. */
#define DEAD_URL "nats://127.0.0.1:1"

static void block_and_raise_sigterm(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
    cr_assert_eq(raise(SIGTERM), 0);
}

static bool sigterm_pending(void)
{
    sigset_t pending;
    cr_assert_eq(sigpending(&pending), 0);
    return sigismember(&pending, SIGTERM) == 1;
}

Test(natsconn, a_library_connect_leaves_the_programs_sigterm_alone)
{
    block_and_raise_sigterm();
    natsConnection *nc = NULL;
    int64_t t0 = kiln_mono_ms();
    kiln_status st = kiln_nats_connect(DEAD_URL, "t", 600, &nc, NULL);
    cr_assert_neq(st, KILN_OK);
    cr_assert_neq(st, KILN_ESTOPPED, "the library took a signal it was not given");
    cr_assert_geq(kiln_mono_ms() - t0, 400, "it retried for its timeout");
    cr_assert(sigterm_pending(), "SIGTERM is still the program's to take");
}

Test(natsconn, a_daemon_connect_stops_at_a_sigterm)
{
    kiln_nats_stop_on_signals();
    block_and_raise_sigterm();
    natsConnection *nc = NULL;
    int64_t t0 = kiln_mono_ms();
    kiln_status st = kiln_nats_connect(DEAD_URL, "t", 30000, &nc, NULL);
    cr_assert_eq(st, KILN_ESTOPPED, "status %s", kiln_status_str(st));
    cr_assert_lt(kiln_mono_ms() - t0, 2000, "it did not wait out the connect timeout");
    cr_assert(!sigterm_pending(), "the signal was taken");
    cr_assert_null(nc);
}
