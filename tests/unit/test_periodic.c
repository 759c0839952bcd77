/* test_periodic.c - common/periodic.c: calls come at the interval, and stop
 * returns at once however long the interval. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <time.h>

#include "clock.h"
#include "periodic.h"

static atomic_int periodic_calls;
static atomic_int periodic_saw_stopping;

static void periodic_count(kiln_periodic *p, void *arg)
{
    (void)arg;
    atomic_fetch_add(&periodic_calls, 1);
    if (kiln_periodic_stopping(p)) atomic_store(&periodic_saw_stopping, 1);
}

Test(periodic, calls_come_at_the_interval)
{
    kiln_periodic *p = NULL;
    atomic_store(&periodic_calls, 0);
    int64_t t0 = kiln_mono_ms();
    cr_assert_eq(kiln_periodic_start("kiln-test", 20, periodic_count, NULL, &p), KILN_OK);
    while (atomic_load(&periodic_calls) < 3 && kiln_mono_ms() - t0 < 5000) {
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int64_t took = kiln_mono_ms() - t0;
    kiln_periodic_stop(p);
    cr_assert_geq(atomic_load(&periodic_calls), 3, "3 calls at 20 ms did not come within 5 s");
    cr_expect_geq(took, 60, "3 calls came after %lld ms, before 3 intervals", (long long)took);
    cr_expect_eq(atomic_load(&periodic_saw_stopping), 0, "stopping before stop was asked");
}

Test(periodic, stop_does_not_wait_for_the_interval)
{
    kiln_periodic *p = NULL;
    atomic_store(&periodic_calls, 0);
    cr_assert_eq(kiln_periodic_start("kiln-test", 3600 * 1000, periodic_count, NULL, &p), KILN_OK);
    int64_t t0 = kiln_mono_ms();
    kiln_periodic_stop(p);
    cr_expect_lt(kiln_mono_ms() - t0, 1000, "stop waited for the hour");
    cr_expect_eq(atomic_load(&periodic_calls), 0, "no call before the first interval");
    kiln_periodic_stop(NULL); /* NULL-safe */
}

Test(periodic, retention_passes_run_every_tenth_of_the_ttl_within_bounds)
{
    cr_expect_eq(kiln_periodic_retention_ms(2000), 1000, "at least 1 s");
    cr_expect_eq(kiln_periodic_retention_ms(60 * 1000), 6000);
    cr_expect_eq(kiln_periodic_retention_ms(7LL * 24 * 3600 * 1000), 10 * 60 * 1000, "at most 10 min");
}

Test(periodic, bad_arguments_are_refused)
{
    kiln_periodic *p = (kiln_periodic *)1;
    cr_expect_eq(kiln_periodic_start("kiln-test", 0, periodic_count, NULL, &p), KILN_EINVAL);
    cr_expect_null(p);
    cr_expect_eq(kiln_periodic_start("kiln-test", 10, NULL, NULL, &p), KILN_EINVAL);
}

static void periodic_sooner_once(kiln_periodic *p, void *arg)
{
    (void)arg;
    if (atomic_fetch_add(&periodic_calls, 1) == 0) kiln_periodic_next_in(p, 10);
}

/* An interval of 10 s, the first call after 10 ms, and that call asking for
 * the next one 10 ms later: two calls at once, then the interval again. */
Test(periodic, the_first_call_and_a_call_asked_sooner_come_early)
{
    kiln_periodic *p = NULL;
    atomic_store(&periodic_calls, 0);
    int64_t t0 = kiln_mono_ms();
    cr_assert_eq(kiln_periodic_start_in("kiln-test", 10, 10000, periodic_sooner_once, NULL, &p), KILN_OK);
    while (atomic_load(&periodic_calls) < 2 && kiln_mono_ms() - t0 < 5000) {
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int64_t took = kiln_mono_ms() - t0;
    /* Observation window: the third call must wait for the interval. */
    struct timespec window = {0, 300 * 1000000L};
    nanosleep(&window, NULL);
    int calls = atomic_load(&periodic_calls);
    kiln_periodic_stop(p);
    cr_expect_leq(took, 2000, "two early calls took %lld ms", (long long)took);
    cr_expect_eq(calls, 2, "%d calls within 300 ms after the early ones (interval 10 s)", calls);
    cr_expect_eq(kiln_periodic_start_in("kiln-test", -1, 10, periodic_count, NULL, &p), KILN_EINVAL);
}

/* Every running periodic is asked to stop at once; each stop then only joins. */
Test(periodic, stop_all_soon_asks_every_running_one)
{
    kiln_periodic *a = NULL, *b = NULL;
    cr_assert_eq(kiln_periodic_start("kiln-test-a", 10000, periodic_count, NULL, &a), KILN_OK);
    cr_assert_eq(kiln_periodic_start("kiln-test-b", 10000, periodic_count, NULL, &b), KILN_OK);
    cr_assert_not(kiln_periodic_stopping(a));
    kiln_periodic_stop_all_soon();
    cr_expect(kiln_periodic_stopping(a) && kiln_periodic_stopping(b), "not every periodic was asked");
    int64_t t0 = kiln_mono_ms();
    kiln_periodic_stop(a);
    kiln_periodic_stop(b);
    cr_expect_leq(kiln_mono_ms() - t0, 1000, "stopping took %lld ms", (long long)(kiln_mono_ms() - t0));
    kiln_periodic_stop_all_soon(); /* none left: nothing to touch */
}
