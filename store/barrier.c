/* barrier.c - waits until the apply loop has caught up with KILN_JOBS. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "barrier.h"
#include "clock.h"
#include "log.h"
#include "natsconn.h"
#include "subjects.h"

struct barrier {
    jsCtx *js; /* not owned */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    uint64_t applied_seq;
    uint64_t fetch_epoch; /* incremented when a fetch starts */
    uint64_t idle_epoch;  /* epoch of the latest fetch that found nothing */
};

kiln_status barrier_create(jsCtx *js, uint64_t applied_seq, barrier **out)
{
    barrier *b = calloc(1, sizeof *b);
    if (b == NULL) return KILN_ENOMEM;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        free(b);
        return KILN_ERR;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        free(b);
        return KILN_ERR;
    }
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        pthread_cond_destroy(&b->cond);
        free(b);
        return KILN_ERR;
    }
    b->js = js;
    b->applied_seq = applied_seq;
    *out = b;
    return KILN_OK;
}

void barrier_destroy(barrier *b)
{
    if (b == NULL) return;
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

uint64_t barrier_fetch_begin(barrier *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t e = ++b->fetch_epoch;
    pthread_mutex_unlock(&b->mu);
    return e;
}

void barrier_fetch_idle(barrier *b, uint64_t epoch)
{
    pthread_mutex_lock(&b->mu);
    if (epoch > b->idle_epoch) b->idle_epoch = epoch;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

void barrier_applied(barrier *b, uint64_t seq)
{
    pthread_mutex_lock(&b->mu);
    if (seq > b->applied_seq) b->applied_seq = seq;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

uint64_t barrier_applied_seq(barrier *b)
{
    pthread_mutex_lock(&b->mu);
    uint64_t v = b->applied_seq;
    pthread_mutex_unlock(&b->mu);
    return v;
}

void barrier_epochs(barrier *b, uint64_t *fetch_epoch, uint64_t *idle_epoch)
{
    pthread_mutex_lock(&b->mu);
    *fetch_epoch = b->fetch_epoch;
    *idle_epoch = b->idle_epoch;
    pthread_mutex_unlock(&b->mu);
}

/* CLOCK_MONOTONIC now + ms. */
static struct timespec barrier_deadline(int64_t ms)
{
    struct timespec d;
    clock_gettime(CLOCK_MONOTONIC, &d);
    if (ms <= 0) return d;
    d.tv_sec += ms / 1000;
    d.tv_nsec += (ms % 1000) * 1000000L;
    if (d.tv_nsec >= 1000000000L) {
        d.tv_sec++;
        d.tv_nsec -= 1000000000L;
    }
    return d;
}

kiln_status barrier_wait_seq(barrier *b, uint64_t seq, int64_t timeout_ms)
{
    struct timespec deadline = barrier_deadline(timeout_ms);
    kiln_status st = KILN_OK;
    pthread_mutex_lock(&b->mu);
    while (b->applied_seq < seq) {
        if (pthread_cond_timedwait(&b->cond, &b->mu, &deadline) == ETIMEDOUT) {
            if (b->applied_seq < seq) st = KILN_ETIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return st;
}

kiln_status barrier_wait(barrier *b, int64_t timeout_ms)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    int64_t start = kiln_mono_ms();
    if (timeout_ms > BARRIER_MAX_WAIT_MS) timeout_ms = BARRIER_MAX_WAIT_MS;

    jsOptions_Init(&jo);
    jo.Wait = timeout_ms > 0 ? timeout_ms : 1;
    natsStatus s = js_GetStreamInfo(&si, b->js, KILN_STREAM_JOBS, &jo, &jerr);
    if (s != NATS_OK) {
        LOG_WARN("barrier stream info failed status=%s jerr=%d", natsStatus_GetText(s),
                 (int)jerr);
        return kiln_nats_status(s);
    }
    uint64_t target = si->State.LastSeq;
    jsStreamInfo_Destroy(si);

    struct timespec deadline = barrier_deadline(timeout_ms - (kiln_mono_ms() - start));
    kiln_status st = KILN_OK;
    pthread_mutex_lock(&b->mu);
    uint64_t epoch0 = b->fetch_epoch;
    while (b->applied_seq < target && b->idle_epoch <= epoch0) {
        int rc = pthread_cond_timedwait(&b->cond, &b->mu, &deadline);
        if (rc == ETIMEDOUT) {
            st = KILN_ETIMEOUT;
            break;
        }
    }
    if (st == KILN_ETIMEOUT && (b->applied_seq >= target || b->idle_epoch > epoch0)) st = KILN_OK;
    uint64_t applied = b->applied_seq;
    pthread_mutex_unlock(&b->mu);
    LOG_DEBUG("barrier target=%llu applied=%llu status=%s ms=%lld",
              (unsigned long long)target, (unsigned long long)applied, kiln_status_str(st),
              (long long)(kiln_mono_ms() - start));
    return st;
}
