/* slots.c - the bounded in-flight accounting: KILN_CONCURRENCY slots behind a
 * mutex and a condition variable. The fetch thread takes slots for what it
 * fetched; whoever finishes a job releases its slot. */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "cons.h"

static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slots_cv;
static int64_t slots_total;
static int64_t slots_used;

kiln_status cons_slots_init(int64_t n)
{
    pthread_condattr_t a;
    if (n <= 0) return KILN_EINVAL;
    if (pthread_condattr_init(&a) != 0) return KILN_ERR;
    /* Monotonic waits: a wall-clock step must not stretch the fetch loop. */
    if (pthread_condattr_setclock(&a, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&slots_cv, &a) != 0) {
        pthread_condattr_destroy(&a);
        return KILN_ERR;
    }
    pthread_condattr_destroy(&a);
    slots_total = n;
    slots_used = 0;
    return KILN_OK;
}

void cons_slots_destroy(void)
{
    pthread_cond_destroy(&slots_cv);
}

static void slots_deadline(int64_t timeout_ms, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int64_t cons_slots_wait_free(int64_t want, int64_t timeout_ms)
{
    struct timespec ts;
    int64_t free_n = 0;
    if (want < 1) want = 1;
    if (want > slots_total) want = slots_total;
    slots_deadline(timeout_ms, &ts);
    pthread_mutex_lock(&slots_mu);
    while (slots_total - slots_used < want) {
        if (pthread_cond_timedwait(&slots_cv, &slots_mu, &ts) == ETIMEDOUT) break;
    }
    free_n = slots_total - slots_used;
    pthread_mutex_unlock(&slots_mu);
    return free_n > 0 ? free_n : 0;
}

void cons_slots_take(int64_t n)
{
    pthread_mutex_lock(&slots_mu);
    slots_used += n;
    kiln_metric_set(cons_g.m_in_flight, slots_used);
    pthread_mutex_unlock(&slots_mu);
}

void cons_slots_release(int64_t n)
{
    pthread_mutex_lock(&slots_mu);
    slots_used -= n;
    if (slots_used < 0) slots_used = 0;
    kiln_metric_set(cons_g.m_in_flight, slots_used);
    pthread_cond_broadcast(&slots_cv);
    pthread_mutex_unlock(&slots_mu);
}

int64_t cons_slots_used(void)
{
    int64_t u;
    pthread_mutex_lock(&slots_mu);
    u = slots_used;
    pthread_mutex_unlock(&slots_mu);
    return u;
}

bool cons_slots_wait_idle(int64_t timeout_ms)
{
    struct timespec ts;
    bool idle;
    slots_deadline(timeout_ms, &ts);
    pthread_mutex_lock(&slots_mu);
    while (slots_used > 0) {
        if (pthread_cond_timedwait(&slots_cv, &slots_mu, &ts) == ETIMEDOUT) break;
    }
    idle = slots_used == 0;
    pthread_mutex_unlock(&slots_mu);
    return idle;
}
