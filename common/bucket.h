/* bucket.h - a token bucket: rate tokens a second, at most burst saved up.
 * No lock inside: the owner of a bucket serialises its calls. */
#ifndef KILN_BUCKET_H
#define KILN_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    double rate;  /* tokens per second; <= 0: unlimited */
    double burst; /* most tokens kept */
    double tokens;
    int64_t last_us; /* kiln_mono_us() of the last refill */
} kiln_bucket;

/* A full bucket at now_us. burst 0 = max(1, ceil(rate)). */
void kiln_bucket_init(kiln_bucket *b, double rate_per_s, double burst, int64_t now_us);
/* Whole tokens available at now_us (INT64_MAX when unlimited). */
int64_t kiln_bucket_available(kiln_bucket *b, int64_t now_us);
/* Takes n tokens if there are; true when taken. */
bool kiln_bucket_take(kiln_bucket *b, int64_t n, int64_t now_us);
/* Changes the rate from now_us on (what was saved up before stays, within
 * the burst). */
void kiln_bucket_set_rate(kiln_bucket *b, double rate_per_s, int64_t now_us);
/* Microseconds from now_us until one token is there (0: now). */
int64_t kiln_bucket_wait_us(kiln_bucket *b, int64_t now_us);

#endif
