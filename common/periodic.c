/* periodic.c - a thread that calls one function at a fixed interval.
 *
 * The wait is a condition variable on CLOCK_MONOTONIC, so stop wakes the
 * thread at once and a wall-clock change does not move the schedule. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "periodic.h"

/* Every running periodic of the process, for kiln_periodic_stop_all_soon. */
static pthread_mutex_t periodic_all_mu = PTHREAD_MUTEX_INITIALIZER;
static kiln_periodic *periodic_all;

struct kiln_periodic {
    kiln_periodic *next_all; /* under periodic_all_mu */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool stop;         /* under mu */
    int64_t next_ms;   /* under mu: the next wait when >= 0, else interval_ms */
    atomic_bool stopping;
    int64_t interval_ms;
    kiln_periodic_fn fn;
    void *arg;
};

static void periodic_deadline(struct timespec *ts, int64_t after_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(after_ms / 1000);
    ts->tv_nsec += (long)(after_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *periodic_main(void *arg)
{
    kiln_periodic *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        struct timespec ts;
        periodic_deadline(&ts, p->next_ms >= 0 ? p->next_ms : p->interval_ms);
        p->next_ms = -1;
        while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &ts) == 0) {
        }
        if (p->stop) break;
        pthread_mutex_unlock(&p->mu);
        p->fn(p, p->arg);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

kiln_status kiln_periodic_start(const char *name, int64_t interval_ms, kiln_periodic_fn fn,
                                void *arg, kiln_periodic **out)
{
    return kiln_periodic_start_in(name, interval_ms, interval_ms, fn, arg, out);
}

kiln_status kiln_periodic_start_in(const char *name, int64_t first_ms, int64_t interval_ms,
                                   kiln_periodic_fn fn, void *arg, kiln_periodic **out)
{
    *out = NULL;
    if (interval_ms <= 0 || first_ms < 0 || fn == NULL) return KILN_EINVAL;
    kiln_periodic *p = calloc(1, sizeof *p);
    if (p == NULL) return KILN_ENOMEM;
    p->interval_ms = interval_ms;
    p->next_ms = first_ms;
    p->fn = fn;
    p->arg = arg;
    atomic_init(&p->stopping, false);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) goto fail;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) goto fail;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        pthread_cond_destroy(&p->cv);
        goto fail;
    }
    if (pthread_create(&p->thread, NULL, periodic_main, p) != 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        goto fail;
    }
    pthread_setname_np(p->thread, name);
    pthread_mutex_lock(&periodic_all_mu);
    p->next_all = periodic_all;
    periodic_all = p;
    pthread_mutex_unlock(&periodic_all_mu);
    *out = p;
    return KILN_OK;
fail:
    free(p);
    return KILN_ERR;
}

void kiln_periodic_next_in(kiln_periodic *p, int64_t ms)
{
    pthread_mutex_lock(&p->mu);
    p->next_ms = ms >= 0 ? ms : -1;
    pthread_mutex_unlock(&p->mu);
}

bool kiln_periodic_stopping(kiln_periodic *p) { return atomic_load(&p->stopping); }

int64_t kiln_periodic_retention_ms(int64_t ttl_ms)
{
    const int64_t min_ms = 1000, max_ms = 10 * 60 * 1000;
    int64_t ms = ttl_ms / 10;
    return ms < min_ms ? min_ms : ms > max_ms ? max_ms : ms;
}

/* Asks p's thread to stop (a call in progress runs on to its end). */
static void periodic_ask_stop(kiln_periodic *p)
{
    atomic_store(&p->stopping, true);
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void kiln_periodic_stop_all_soon(void)
{
    pthread_mutex_lock(&periodic_all_mu);
    for (kiln_periodic *p = periodic_all; p != NULL; p = p->next_all) periodic_ask_stop(p);
    pthread_mutex_unlock(&periodic_all_mu);
}

void kiln_periodic_stop(kiln_periodic *p)
{
    if (p == NULL) return;
    pthread_mutex_lock(&periodic_all_mu);
    kiln_periodic **pp = &periodic_all;
    while (*pp != NULL && *pp != p) pp = &(*pp)->next_all;
    if (*pp == p) *pp = p->next_all;
    pthread_mutex_unlock(&periodic_all_mu);
    periodic_ask_stop(p);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
