/* test_clock.c - unit tests for common/clock.c. */
#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "clock.h"

Test(clock, rfc3339_known_instants)
{
    char buf[32];
    kiln_rfc3339_ms(0, buf, sizeof buf);
    cr_assert_str_eq(buf, "1970-01-01T00:00:00.000Z");
    kiln_rfc3339_ms(1795503882123LL, buf, sizeof buf);
    cr_assert_str_eq(buf, "2026-11-24T07:04:42.123Z");
    kiln_rfc3339_ms(951868799000LL + 7, buf, sizeof buf);
    cr_assert_str_eq(buf, "2000-02-29T23:59:59.007Z");
    cr_assert_eq(strlen(buf), 24);
}

Test(clock, rfc3339_before_epoch_floors)
{
    char buf[32];
    kiln_rfc3339_ms(-1, buf, sizeof buf);
    cr_assert_str_eq(buf, "1969-12-31T23:59:59.999Z");
}

Test(clock, rfc3339_small_buffer_is_terminated)
{
    char buf[8];
    memset(buf, 'x', sizeof buf);
    kiln_rfc3339_ms(0, buf, sizeof buf);
    cr_assert_eq(buf[7], '\0');
    cr_assert_str_eq(buf, "1970-01");
}

Test(clock, now_matches_time)
{
    int64_t a = (int64_t)time(NULL) * 1000;
    int64_t now = kiln_now_ms();
    cr_assert(now >= a - 1000 && now <= a + 2000, "now=%lld time=%lld", (long long)now,
              (long long)a);
}

Test(clock, monotonic_never_goes_back)
{
    int64_t prev_ms = kiln_mono_ms();
    int64_t prev_us = kiln_mono_us();
    for (int i = 0; i < 10000; i++) {
        int64_t ms = kiln_mono_ms();
        int64_t us = kiln_mono_us();
        cr_assert(ms >= prev_ms);
        cr_assert(us >= prev_us);
        prev_ms = ms;
        prev_us = us;
    }
    int64_t ms = kiln_mono_ms(), us = kiln_mono_us();
    cr_assert(us / 1000 >= ms - 1 && us / 1000 <= ms + 1000);
}
