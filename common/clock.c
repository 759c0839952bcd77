/* clock.c - wall and monotonic time in milliseconds, RFC 3339 formatting. */
#include <stdio.h>
#include <time.h>

#include "clock.h"

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) return 0;
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t kiln_now_ms(void) { return clock_ns(CLOCK_REALTIME) / 1000000LL; }
int64_t kiln_mono_ms(void) { return clock_ns(CLOCK_MONOTONIC) / 1000000LL; }
int64_t kiln_mono_us(void) { return clock_ns(CLOCK_MONOTONIC) / 1000LL; }

void kiln_rfc3339_ms(int64_t unix_ms, char *buf, size_t buflen)
{
    if (buf == NULL || buflen == 0) return;
    /* Floor division so times before 1970 still format sensibly. */
    int64_t secs = unix_ms / 1000;
    int64_t ms = unix_ms % 1000;
    if (ms < 0) {
        ms += 1000;
        secs -= 1;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL) {
        buf[0] = '\0';
        return;
    }
    snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
}
