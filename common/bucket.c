/* bucket.c - a token bucket (gateway submit limits, consumer provider rate). */
#include <math.h>

#include "bucket.h"

void kiln_bucket_init(kiln_bucket *b, double rate_per_s, double burst, int64_t now_us) {
    b->rate = rate_per_s;
    b->burst = burst > 0 ? burst : fmax(1.0, ceil(rate_per_s));
    b->tokens = b->burst;
    b->last_us = now_us;
}

static void bucket_refill(kiln_bucket *b, int64_t now_us) {
    /* A clock read before another thread's later one must not refill backwards. */
    if (now_us < b->last_us) now_us = b->last_us;
    b->tokens = fmin(b->burst, b->tokens + (double)(now_us - b->last_us) / 1e6 * b->rate);
    b->last_us = now_us;
}

int64_t kiln_bucket_available(kiln_bucket *b, int64_t now_us) {
    if (b->rate <= 0) return INT64_MAX;
    bucket_refill(b, now_us);
    return (int64_t)floor(b->tokens);
}

bool kiln_bucket_take(kiln_bucket *b, int64_t n, int64_t now_us) {
    if (b->rate <= 0) return true;
    bucket_refill(b, now_us);
    if (b->tokens < (double)n) return false;
    b->tokens -= (double)n;
    return true;
}

int64_t kiln_bucket_wait_us(kiln_bucket *b, int64_t now_us) {
    if (b->rate <= 0) return 0;
    bucket_refill(b, now_us);
    if (b->tokens >= 1.0) return 0;
    return (int64_t)ceil((1.0 - b->tokens) / b->rate * 1e6);
}

void kiln_bucket_set_rate(kiln_bucket *b, double rate_per_s, int64_t now_us)
{
    if (b->rate > 0) bucket_refill(b, now_us);
    else b->last_us = now_us;
    b->rate = rate_per_s;
}
