/* donecheck.c - after a reconnect to NATS, makes sure the jobs.done the
 * store published shortly before are still in KILN_DONE, and announces
 * again each one nats-server lost.
 *
 * Seen in chaos runs with nats-server SIGKILLs (2 of 15 in one round): the
 * store published a job's jobs.done, JetStream confirmed it, the store acked
 * the transition, and ~40 ms later nats-server was killed. The restarted
 * nats-server 2.9.10 did not have the message (why is not known). The
 * store kept the right state, but subscribers of jobs.done never heard of
 * the job's end.
 *
 * So the apply connection's ack handler hands every confirmed jobs.done to
 * donecheck_keep, which keeps those of the store's last keep_ms of
 * publishing (at most cap; the oldest go first). When any connection of the store reconnects, everything kept until
 * then is checked: the message KILN_DONE holds at its sequence must be the
 * same jobs.done (the restarted server may have given a lost sequence to a
 * newer message). One that is not there is published again with its
 * Nats-Msg-Id, so the stream keeps one copy; core subscribers get it again,
 * the at-least-once the contract allows on crash replay. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "donecheck.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "periodic.h"
#include "subjects.h"

#define DONECHECK_TICK_MS 100     /* how soon a reconnect is checked */
#define DONECHECK_GET_WAIT_MS 2000 /* one message look-up or publish */
/* How long a check keeps trying while JetStream does not answer (a server
 * still recovering its streams) before it gives up on what is left. */
#define DONECHECK_GIVEUP_MS 120000

typedef struct {
    natsMsg *msg;
    uint64_t seq;
    int64_t at_ms; /* kiln_mono_ms when confirmed */
} donecheck_entry;

/* A FIFO of entries in a fixed array (oldest at head). */
typedef struct {
    donecheck_entry *e;
    size_t cap, head, n;
} donecheck_ring;

struct donecheck {
    pthread_mutex_t mu; /* kept, todo, taken_reconnect */
    donecheck_ring kept; /* confirmed since the last reconnect was taken */
    donecheck_ring todo; /* confirmed before a reconnect, not yet checked */
    int64_t taken_reconnect; /* kiln_nats_reconnected_at() when kept last went to todo */
    int64_t keep_ms;
    /* the checking thread's own */
    kiln_periodic *timer;
    jsCtx *js;
    donecheck_ring work;
    int64_t work_since_ms;
    kiln_metric *m_checked, *m_reannounced;
};

static kiln_status donecheck_ring_init(donecheck_ring *r, size_t cap)
{
    r->e = calloc(cap, sizeof *r->e);
    r->cap = cap;
    r->head = r->n = 0;
    return r->e != NULL ? KILN_OK : KILN_ENOMEM;
}

static donecheck_entry *donecheck_ring_at(donecheck_ring *r, size_t i)
{
    return &r->e[(r->head + i) % r->cap];
}

/* Removes and returns the oldest entry (r->n > 0). */
static donecheck_entry donecheck_ring_pop(donecheck_ring *r)
{
    donecheck_entry out = r->e[r->head];
    r->head = (r->head + 1) % r->cap;
    r->n--;
    return out;
}

/* Appends e; when full, the oldest is pushed out into *dropped (msg NULL
 * when nothing was). */
static void donecheck_ring_push(donecheck_ring *r, donecheck_entry e, donecheck_entry *dropped)
{
    dropped->msg = NULL;
    if (r->n == r->cap) *dropped = donecheck_ring_pop(r);
    *donecheck_ring_at(r, r->n) = e;
    r->n++;
}

static void donecheck_ring_free(donecheck_ring *r)
{
    while (r->n > 0) natsMsg_Destroy(donecheck_ring_pop(r).msg);
    free(r->e);
    r->e = NULL;
}

/* Under mu: after a reconnect not yet taken, everything kept was confirmed
 * by the server from before it and goes to be checked. Returns how many
 * older entries todo had to push out (a reconnect storm). */
static size_t donecheck_take_reconnect(donecheck *dc)
{
    int64_t rc = kiln_nats_reconnected_at();
    size_t lost = 0;
    if (rc == dc->taken_reconnect) return 0;
    dc->taken_reconnect = rc;
    while (dc->kept.n > 0) {
        donecheck_entry dropped;
        donecheck_ring_push(&dc->todo, donecheck_ring_pop(&dc->kept), &dropped);
        if (dropped.msg != NULL) {
            natsMsg_Destroy(dropped.msg);
            lost++;
        }
    }
    return lost;
}

kiln_status donecheck_create(int64_t keep_ms, size_t cap, donecheck **out)
{
    *out = NULL;
    donecheck *dc = calloc(1, sizeof *dc);
    if (dc == NULL) return KILN_ENOMEM;
    dc->keep_ms = keep_ms;
    dc->taken_reconnect = kiln_nats_reconnected_at();
    pthread_mutex_init(&dc->mu, NULL);
    if (donecheck_ring_init(&dc->kept, cap) != KILN_OK ||
        donecheck_ring_init(&dc->todo, cap) != KILN_OK ||
        donecheck_ring_init(&dc->work, cap) != KILN_OK) {
        donecheck_destroy(dc);
        return KILN_ENOMEM;
    }
    dc->m_checked = kiln_metric_counter("kiln_store_done_rechecked_total",
                                        "jobs.done looked up in KILN_DONE after a reconnect to NATS");
    dc->m_reannounced = kiln_metric_counter(
        "kiln_store_done_reannounced_total",
        "jobs.done published again because nats-server lost it after confirming it");
    *out = dc;
    return KILN_OK;
}

void donecheck_keep(donecheck *dc, natsMsg *msg, uint64_t seq)
{
    donecheck_entry e = {msg, seq, kiln_mono_ms()}, dropped, old[4];
    size_t nold = 0;
    pthread_mutex_lock(&dc->mu);
    size_t lost = donecheck_take_reconnect(dc);
    /* keep_ms of the store's latest publishing, not of wall time: what a
     * crash loses is the server's latest writes, however long ago. */
    while (nold < sizeof old / sizeof old[0] && dc->kept.n > 0 &&
           donecheck_ring_at(&dc->kept, 0)->at_ms < e.at_ms - dc->keep_ms)
        old[nold++] = donecheck_ring_pop(&dc->kept);
    donecheck_ring_push(&dc->kept, e, &dropped);
    pthread_mutex_unlock(&dc->mu);
    natsMsg_Destroy(dropped.msg); /* the oldest: cap is the limit under load */
    for (size_t i = 0; i < nold; i++) natsMsg_Destroy(old[i].msg);
    if (lost > 0) LOG_WARN("donecheck: too many jobs.done to check, oldest not checked count=%zu", lost);
}

/* Whether the message KILN_DONE holds at a kept one's sequence is that one. */
static bool donecheck_same(natsMsg *kept, natsMsg *stored)
{
    int len = natsMsg_GetDataLength(kept);
    return strcmp(natsMsg_GetSubject(kept), natsMsg_GetSubject(stored)) == 0 &&
           len == natsMsg_GetDataLength(stored) &&
           (len == 0 || memcmp(natsMsg_GetData(kept), natsMsg_GetData(stored), (size_t)len) == 0);
}

typedef enum { DONECHECK_THERE, DONECHECK_LOST, DONECHECK_UNKNOWN } donecheck_verdict;

static donecheck_verdict donecheck_look(donecheck *dc, const donecheck_entry *e)
{
    natsMsg *got = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    if (jsOptions_Init(&jo) != NATS_OK) return DONECHECK_UNKNOWN;
    jo.Wait = DONECHECK_GET_WAIT_MS;
    natsStatus s = js_GetMsg(&got, dc->js, KILN_STREAM_DONE, e->seq, &jo, &jerr);
    if (s == NATS_OK) {
        donecheck_verdict v = donecheck_same(e->msg, got) ? DONECHECK_THERE : DONECHECK_LOST;
        natsMsg_Destroy(got);
        return v;
    }
    if (jerr == JSNoMessageFoundErr || (s == NATS_NOT_FOUND && jerr == 0)) return DONECHECK_LOST;
    return DONECHECK_UNKNOWN;
}

/* A fresh copy of m (subject, payload, headers): the kept one went through
 * the async publisher once. */
static natsStatus donecheck_copy(natsMsg *m, natsMsg **out)
{
    const char **keys = NULL;
    int nkeys = 0;
    natsMsg *c = NULL;
    natsStatus s = natsMsg_Create(&c, natsMsg_GetSubject(m), NULL, natsMsg_GetData(m),
                                  natsMsg_GetDataLength(m));
    if (s == NATS_OK) {
        s = natsMsgHeader_Keys(m, &keys, &nkeys);
        if (s == NATS_NOT_FOUND) s = NATS_OK; /* no headers */
    }
    for (int i = 0; s == NATS_OK && i < nkeys; i++) {
        const char *v = NULL;
        s = natsMsgHeader_Get(m, keys[i], &v);
        if (s == NATS_OK) s = natsMsgHeader_Set(c, keys[i], v);
    }
    free((void *)keys);
    if (s != NATS_OK) {
        natsMsg_Destroy(c);
        return s;
    }
    *out = c;
    return NATS_OK;
}

static bool donecheck_republish(donecheck *dc, const donecheck_entry *e)
{
    natsMsg *c = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    const char *id = NULL;
    if (natsMsgHeader_Get(e->msg, KILN_HDR_JOB_ID, &id) != NATS_OK) id = "-";
    natsStatus s = jsPubOptions_Init(&po);
    if (s == NATS_OK) s = donecheck_copy(e->msg, &c);
    if (s == NATS_OK) {
        po.MaxWait = DONECHECK_GET_WAIT_MS;
        s = js_PublishMsg(&pa, dc->js, c, &po, &jerr);
    }
    natsMsg_Destroy(c);
    if (s != NATS_OK) {
        LOG_DEBUG("donecheck: publish again failed job=%s status=%s jerr=%d", id,
                  natsStatus_GetText(s), (int)jerr);
        return false;
    }
    LOG_WARN("donecheck: jobs.done lost by nats-server after it confirmed it, published again "
             "job=%s seq=%" PRIu64 " new_seq=%" PRIu64 " duplicate=%d",
             id, e->seq, pa->Sequence, (int)pa->Duplicate);
    jsPubAck_Destroy(pa);
    kiln_metric_add(dc->m_reannounced, 1);
    return true;
}

static void donecheck_tick(kiln_periodic *p, void *arg)
{
    donecheck *dc = arg;
    int64_t now = kiln_mono_ms();
    size_t lost = 0;

    pthread_mutex_lock(&dc->mu);
    lost = donecheck_take_reconnect(dc);
    if (dc->work.n == 0 && dc->todo.n > 0) dc->work_since_ms = now;
    while (dc->todo.n > 0) {
        donecheck_entry dropped;
        donecheck_ring_push(&dc->work, donecheck_ring_pop(&dc->todo), &dropped);
        if (dropped.msg != NULL) {
            natsMsg_Destroy(dropped.msg);
            lost++;
        }
    }
    pthread_mutex_unlock(&dc->mu);
    if (lost > 0) LOG_WARN("donecheck: too many jobs.done to check, oldest not checked count=%zu", lost);
    if (dc->work.n == 0) return;

    size_t n0 = dc->work.n, reannounced = 0;
    while (dc->work.n > 0 && !kiln_periodic_stopping(p)) {
        donecheck_entry *e = donecheck_ring_at(&dc->work, 0);
        donecheck_verdict v = donecheck_look(dc, e);
        if (v == DONECHECK_UNKNOWN) break;
        if (v == DONECHECK_LOST) {
            if (!donecheck_republish(dc, e)) break;
            reannounced++;
        }
        kiln_metric_add(dc->m_checked, 1);
        natsMsg_Destroy(donecheck_ring_pop(&dc->work).msg);
    }
    if (dc->work.n == 0) {
        LOG_INFO("donecheck: jobs.done from before the reconnect checked count=%zu announced_again=%zu",
                 n0, reannounced);
    } else if (kiln_mono_ms() - dc->work_since_ms > DONECHECK_GIVEUP_MS) {
        LOG_WARN("donecheck: JetStream did not answer, jobs.done left unchecked count=%zu",
                 dc->work.n);
        while (dc->work.n > 0) natsMsg_Destroy(donecheck_ring_pop(&dc->work).msg);
    }
}

kiln_status donecheck_start(donecheck *dc, jsCtx *js)
{
    dc->js = js;
    return kiln_periodic_start("kiln-donecheck", DONECHECK_TICK_MS, donecheck_tick, dc, &dc->timer);
}

void donecheck_stop(donecheck *dc)
{
    if (dc == NULL) return;
    kiln_periodic_stop(dc->timer);
    dc->timer = NULL;
}

void donecheck_destroy(donecheck *dc)
{
    if (dc == NULL) return;
    donecheck_ring_free(&dc->kept);
    donecheck_ring_free(&dc->todo);
    donecheck_ring_free(&dc->work);
    pthread_mutex_destroy(&dc->mu);
    free(dc);
}
