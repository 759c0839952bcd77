/* test_natsconn.c - the initial connect's retry wait and stop signals: only
 * a daemon that opted in (kiln_nats_stop_on_signals) has its SIGTERM taken
 * there; the client library never takes a signal of the program that links it.
 * Each Criterion test runs in a process of its own, so the opt-in of one test
 * does not reach another. */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>
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

/* ---- the server list (KILN_NATS_URL) -------------------------------------- */

static int urls_ok(const char *urls)
{
    char why[160] = "";
    kiln_status st = kiln_nats_urls_check(urls, why, sizeof why);
    cr_assert(st == KILN_OK || why[0] != '\0', "'%s' refused without a reason", urls);
    return st == KILN_OK;
}

Test(natsconn, server_lists_that_libnats_can_use_are_accepted)
{
    static const char *const good[] = {
        "nats://127.0.0.1:4222", "tls://nats.example.com:4443", "localhost:4222", "localhost",
        "NATS://h:1", "nats://user:pass@h:4222", "nats://token@h", "tls://[::1]:4222",
        "nats://a:1,nats://b:2", "nats://a:1, nats://b:2", " nats://a:1 ", "nats://h-1.x_y:65535",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_expect(urls_ok(good[i]), "'%s' refused", good[i]);
}

Test(natsconn, bad_server_lists_are_refused_with_a_reason)
{
    static const char *const bad[] = {
        "", " ", ",,", "http://h:4222", "ws://h:80", "nats://", "nats://:4222", "nats://h:",
        "nats://h:0", "nats://h:65536", "nats://h:42x", "nats://h:4222/path", "[::1", "[]:4222",
        "nats://h:1,http://h:2", "h\to:1", "nats://h;rm:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect(!urls_ok(bad[i]), "'%s' accepted", bad[i]);
    char many[33 * 12 + 1] = "";
    for (int i = 0; i < 33; i++) strcat(many, "nats://h:1,");
    cr_expect(!urls_ok(many), "33 servers accepted");
    char why[160];
    cr_assert_eq(kiln_nats_urls_check("nats://u:secret@h:0", why, sizeof why), KILN_EINVAL);
    cr_expect(strstr(why, "secret") == NULL, "the reason shows the password: %s", why);
}

Test(natsconn, redaction_hides_user_and_password_only)
{
    char out[256];
    kiln_nats_urls_redact("nats://alice:s3cret@h:4222, tls://tok@g,localhost:1", out, sizeof out);
    cr_expect_str_eq(out, "nats://***@h:4222, tls://***@g,localhost:1");
    kiln_nats_urls_redact("u:p@h:1", out, sizeof out);
    cr_expect_str_eq(out, "***@h:1");
    kiln_nats_urls_redact("nats://h:1", out, sizeof out);
    cr_expect_str_eq(out, "nats://h:1");
    kiln_nats_urls_redact("nats://alice:s3cret@h:4222", out, 12);
    cr_expect_eq(strlen(out), 11);
    cr_expect(strstr(out, "s3cret") == NULL && strstr(out, "alice") == NULL, "%s", out);
}
