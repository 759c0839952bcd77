/* ratelimit.c - per-user submit token buckets (KILN_SUBMIT_RATE/BURST). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "clock.h"
#include "ratelimit.h"

typedef struct {
    pthread_mutex_t mu;
    double tokens;
    int64_t last_us;
} ratelimit_bucket;

static ratelimit_bucket *rl_buckets;
static size_t rl_n;
static double rl_rate, rl_burst;

kiln_status gw_ratelimit_init(double rate_per_s, long burst, size_t nkeys)
{
    rl_rate = rate_per_s;
    if (rate_per_s <= 0) return KILN_OK;
    rl_burst = burst > 0 ? (double)burst : fmax(1.0, ceil(rate_per_s));
    rl_buckets = calloc(nkeys, sizeof *rl_buckets);
    if (rl_buckets == NULL) return KILN_ENOMEM;
    rl_n = nkeys;
    int64_t now = kiln_mono_us();
    for (size_t i = 0; i < nkeys; i++) {
        pthread_mutex_init(&rl_buckets[i].mu, NULL);
        rl_buckets[i].tokens = rl_burst;
        rl_buckets[i].last_us = now;
    }
    return KILN_OK;
}

void gw_ratelimit_free(void)
{
    for (size_t i = 0; i < rl_n; i++) pthread_mutex_destroy(&rl_buckets[i].mu);
    free(rl_buckets);
    rl_buckets = NULL;
    rl_n = 0;
}

bool gw_ratelimit_take(int idx, int *retry_after_s)
{
    return gw_ratelimit_take_at(idx, kiln_mono_us(), retry_after_s);
}

bool gw_ratelimit_take_at(int idx, int64_t now, int *retry_after_s)
{
    if (rl_rate <= 0 || idx < 0 || (size_t)idx >= rl_n) return true;
    ratelimit_bucket *b = &rl_buckets[idx];
    bool ok;
    pthread_mutex_lock(&b->mu);
    /* A clock read before another thread's later one must not refill backwards. */
    if (now < b->last_us) now = b->last_us;
    b->tokens = fmin(rl_burst, b->tokens + (double)(now - b->last_us) / 1e6 * rl_rate);
    b->last_us = now;
    ok = b->tokens >= 1.0;
    if (ok) b->tokens -= 1.0;
    else *retry_after_s = (int)ceil((1.0 - b->tokens) / rl_rate);
    pthread_mutex_unlock(&b->mu);
    if (!ok && *retry_after_s < 1) *retry_after_s = 1;
    return ok;
}
