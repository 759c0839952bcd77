/* ratelimit.c - per-user submit token buckets (KILN_SUBMIT_RATE/BURST). */
#include <pthread.h>
#include <stdlib.h>

#include "bucket.h"
#include "clock.h"
#include "ratelimit.h"

typedef struct {
    pthread_mutex_t mu;
    kiln_bucket b;
} ratelimit_bucket;

static ratelimit_bucket *rl_buckets;
static size_t rl_n;
static double rl_rate;

kiln_status gw_ratelimit_init(double rate_per_s, long burst, size_t nkeys)
{
    rl_rate = rate_per_s;
    if (rate_per_s <= 0) return KILN_OK;
    rl_buckets = calloc(nkeys, sizeof *rl_buckets);
    if (rl_buckets == NULL) return KILN_ENOMEM;
    rl_n = nkeys;
    int64_t now = kiln_mono_us();
    for (size_t i = 0; i < nkeys; i++) {
        pthread_mutex_init(&rl_buckets[i].mu, NULL);
        kiln_bucket_init(&rl_buckets[i].b, rate_per_s, (double)burst, now);
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
    ok = kiln_bucket_take(&b->b, 1, now);
    if (!ok) *retry_after_s = (int)((kiln_bucket_wait_us(&b->b, now) + 999999) / 1000000);
    pthread_mutex_unlock(&b->mu);
    if (!ok && *retry_after_s < 1) *retry_after_s = 1;
    return ok;
}
