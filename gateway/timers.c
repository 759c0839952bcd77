/* timers.c - one thread firing deadlines from a min-heap. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "timers.h"

typedef struct {
    int64_t at;
    gw_timer_fn fn;
    uint64_t token;
    void *arg;
} timers_entry;

static pthread_mutex_t timers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t timers_cv;
static timers_entry *timers_heap;
static size_t timers_len, timers_cap;
static bool timers_running, timers_quit;
static pthread_t timers_thread;

static void timers_swap(size_t a, size_t b)
{
    timers_entry t = timers_heap[a];
    timers_heap[a] = timers_heap[b];
    timers_heap[b] = t;
}

static void timers_up(size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (timers_heap[p].at <= timers_heap[i].at) break;
        timers_swap(p, i);
        i = p;
    }
}

static void timers_down(size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < timers_len && timers_heap[l].at < timers_heap[m].at) m = l;
        if (r < timers_len && timers_heap[r].at < timers_heap[m].at) m = r;
        if (m == i) break;
        timers_swap(m, i);
        i = m;
    }
}

kiln_status gw_timers_add(int64_t deadline_ms, gw_timer_fn fn, uint64_t token, void *arg)
{
    kiln_status st = KILN_OK;
    pthread_mutex_lock(&timers_mu);
    if (timers_len == timers_cap) {
        size_t ncap = timers_cap == 0 ? 1024 : timers_cap * 2;
        timers_entry *n = ncap <= GW_TIMERS_MAX ? realloc(timers_heap, ncap * sizeof *n) : NULL;
        if (n == NULL) {
            st = KILN_ENOMEM;
            goto out;
        }
        timers_heap = n;
        timers_cap = ncap;
    }
    bool earliest = timers_len == 0 || deadline_ms < timers_heap[0].at;
    timers_heap[timers_len] = (timers_entry){deadline_ms, fn, token, arg};
    timers_up(timers_len++);
    /* Only a new earliest deadline needs to wake the thread. */
    if (earliest) pthread_cond_signal(&timers_cv);
out:
    pthread_mutex_unlock(&timers_mu);
    return st;
}

static void *timers_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&timers_mu);
    while (!timers_quit) {
        int64_t now = kiln_mono_ms();
        if (timers_len > 0 && timers_heap[0].at <= now) {
            timers_entry e = timers_heap[0];
            timers_heap[0] = timers_heap[--timers_len];
            timers_down(0);
            pthread_mutex_unlock(&timers_mu);
            e.fn(e.token, e.arg);
            pthread_mutex_lock(&timers_mu);
            continue;
        }
        int64_t wait_ms = timers_len > 0 ? timers_heap[0].at - now : 1000;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += wait_ms / 1000;
        ts.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        int rc = pthread_cond_timedwait(&timers_cv, &timers_mu, &ts);
        if (rc != 0 && rc != ETIMEDOUT) LOG_WARN("timers wait failed rc=%d", rc);
    }
    pthread_mutex_unlock(&timers_mu);
    return NULL;
}

kiln_status gw_timers_start(void)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) return KILN_ERR;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&timers_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) return KILN_ERR;
    timers_quit = false;
    if (pthread_create(&timers_thread, NULL, timers_main, NULL) != 0) {
        pthread_cond_destroy(&timers_cv);
        return KILN_ERR;
    }
    timers_running = true;
    return KILN_OK;
}

void gw_timers_stop(void)
{
    if (!timers_running) return;
    pthread_mutex_lock(&timers_mu);
    timers_quit = true;
    pthread_cond_signal(&timers_cv);
    pthread_mutex_unlock(&timers_mu);
    pthread_join(timers_thread, NULL);
    pthread_cond_destroy(&timers_cv);
    free(timers_heap);
    timers_heap = NULL;
    timers_len = timers_cap = 0;
    timers_running = false;
}
