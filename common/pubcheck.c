/* pubcheck.c - publishes JetStream confirmed shortly before a reconnect to
 * NATS, kept and checked after it.
 *
 * The kept ones are those of the owner's last keep_ms of publishing: time
 * measured between confirmations, not wall time, since a crash takes the
 * server's latest writes however long ago they were. When
 * kiln_nats_reconnected_at() moves, everything kept so far goes to be
 * checked; that happens first thing in kiln_pubcheck_keep and in the tick,
 * under one mutex, so no confirmation from after the reconnect can push an
 * older one out unchecked. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "natsconn.h"
#include "periodic.h"
#include "pubcheck.h"

#define PUBCHECK_TICK_MS 100     /* how soon a reconnect is checked */
#define PUBCHECK_GET_WAIT_MS 2000 /* one message look-up or publish */
/* How long a check keeps asking while nothing answers (a server still
 * recovering its streams) before it gives up on what is left. */
#define PUBCHECK_GIVEUP_MS 120000
/* How long a stopping owner finishes the checks a reconnect left: a store
 * question (2 s) twice, and what they lead to publishing. */

/* A FIFO of entries in a fixed array (oldest at head). */
typedef struct {
    kiln_pubcheck_entry *e;
    size_t cap, head, n;
} pubcheck_ring;

struct kiln_pubcheck {
    char name[16];
    int64_t keep_ms;
    kiln_pubcheck_fn fn;
    void *arg;
    pthread_mutex_t mu;      /* kept, todo, taken_reconnect */
    pubcheck_ring kept;      /* confirmed since the last reconnect was taken */
    pubcheck_ring todo;      /* confirmed before a reconnect, not yet checked */
    int64_t taken_reconnect; /* kiln_nats_reconnected_at() when kept last went to todo */
    /* the checking thread's own */
    kiln_periodic *timer;
    pubcheck_ring work;
    int64_t work_since_ms;
};

static kiln_status pubcheck_ring_init(pubcheck_ring *r, size_t cap)
{
    r->e = calloc(cap, sizeof *r->e);
    r->cap = cap;
    r->head = r->n = 0;
    return r->e != NULL ? KILN_OK : KILN_ENOMEM;
}

static kiln_pubcheck_entry *pubcheck_ring_at(pubcheck_ring *r, size_t i)
{
    return &r->e[(r->head + i) % r->cap];
}

/* Removes and returns the oldest entry (r->n > 0). */
static kiln_pubcheck_entry pubcheck_ring_pop(pubcheck_ring *r)
{
    kiln_pubcheck_entry out = r->e[r->head];
    r->head = (r->head + 1) % r->cap;
    r->n--;
    return out;
}

/* Appends e; when full, frees the oldest and returns 1 (0 otherwise). */
static size_t pubcheck_ring_push(pubcheck_ring *r, kiln_pubcheck_entry e)
{
    size_t dropped = 0;
    if (r->n == r->cap) {
        free(pubcheck_ring_pop(r).data);
        dropped = 1;
    }
    *pubcheck_ring_at(r, r->n) = e;
    r->n++;
    return dropped;
}

static void pubcheck_ring_free(pubcheck_ring *r)
{
    while (r->n > 0) free(pubcheck_ring_pop(r).data);
    free(r->e);
    r->e = NULL;
}

/* Moves every entry of from to the end of to; returns how many older ones
 * to had to drop. */
static size_t pubcheck_ring_move(pubcheck_ring *from, pubcheck_ring *to)
{
    size_t dropped = 0;
    while (from->n > 0) dropped += pubcheck_ring_push(to, pubcheck_ring_pop(from));
    return dropped;
}

/* Under mu: after a reconnect not yet taken, everything kept was confirmed
 * by the server from before it. Returns how many todo had to drop. */
static size_t pubcheck_take_reconnect(kiln_pubcheck *pc)
{
    int64_t rc = kiln_nats_reconnected_at();
    if (rc == pc->taken_reconnect) return 0;
    pc->taken_reconnect = rc;
    return pubcheck_ring_move(&pc->kept, &pc->todo);
}

kiln_status kiln_pubcheck_create(const char *name, int64_t keep_ms, size_t cap,
                                 kiln_pubcheck_fn fn, void *arg, kiln_pubcheck **out)
{
    *out = NULL;
    kiln_pubcheck *pc = calloc(1, sizeof *pc);
    if (pc == NULL) return KILN_ENOMEM;
    snprintf(pc->name, sizeof pc->name, "%s", name);
    pc->keep_ms = keep_ms;
    pc->fn = fn;
    pc->arg = arg;
    pc->taken_reconnect = kiln_nats_reconnected_at();
    pthread_mutex_init(&pc->mu, NULL);
    if (cap == 0 || pubcheck_ring_init(&pc->kept, cap) != KILN_OK ||
        pubcheck_ring_init(&pc->todo, cap) != KILN_OK ||
        pubcheck_ring_init(&pc->work, cap) != KILN_OK) {
        kiln_pubcheck_destroy(pc);
        return KILN_ENOMEM;
    }
    *out = pc;
    return KILN_OK;
}

void kiln_pubcheck_keep(kiln_pubcheck *pc, const void *data, size_t len, int kind, uint64_t seq)
{
    kiln_pubcheck_entry e = {malloc(len > 0 ? len : 1), len, kind, seq, kiln_mono_ms()};
    kiln_pubcheck_entry old[4];
    size_t nold = 0;
    if (e.data == NULL) return; /* out of memory: this one goes unchecked */
    if (len > 0) memcpy(e.data, data, len);
    pthread_mutex_lock(&pc->mu);
    size_t dropped = pubcheck_take_reconnect(pc);
    while (nold < sizeof old / sizeof old[0] && pc->kept.n > 0 &&
           pubcheck_ring_at(&pc->kept, 0)->at_ms < e.at_ms - pc->keep_ms)
        old[nold++] = pubcheck_ring_pop(&pc->kept);
    (void)pubcheck_ring_push(&pc->kept, e); /* past cap the oldest goes: the limit under load */
    pthread_mutex_unlock(&pc->mu);
    for (size_t i = 0; i < nold; i++) free(old[i].data);
    if (dropped > 0)
        LOG_WARN("pubcheck %s: too many publishes to check, oldest not checked count=%zu", pc->name,
                 dropped);
}

/* Moves what a reconnect left to check into work (the checking thread's,
 * or the stopped owner's). */
static void pubcheck_gather(kiln_pubcheck *pc)
{
    pthread_mutex_lock(&pc->mu);
    size_t dropped = pubcheck_take_reconnect(pc);
    if (pc->work.n == 0 && pc->todo.n > 0) pc->work_since_ms = kiln_mono_ms();
    dropped += pubcheck_ring_move(&pc->todo, &pc->work);
    pthread_mutex_unlock(&pc->mu);
    if (dropped > 0)
        LOG_WARN("pubcheck %s: too many publishes to check, oldest not checked count=%zu", pc->name,
                 dropped);
}

/* Decides about work from its oldest entry on, until one has no answer yet
 * (or p is stopping); returns how many were settled. */
static size_t pubcheck_work(kiln_pubcheck *pc, kiln_periodic *p)
{
    size_t settled = 0;
    while (pc->work.n > 0 && (p == NULL || !kiln_periodic_stopping(p))) {
        if (pc->fn(pubcheck_ring_at(&pc->work, 0), pc->arg) == KILN_PUBCHECK_RETRY) break;
        free(pubcheck_ring_pop(&pc->work).data);
        settled++;
    }
    return settled;
}

static void pubcheck_tick(kiln_periodic *p, void *arg)
{
    kiln_pubcheck *pc = arg;
    pubcheck_gather(pc);
    if (pc->work.n == 0) return;
    size_t settled = pubcheck_work(pc, p);
    if (pc->work.n == 0) {
        LOG_INFO("pubcheck %s: publishes from before the reconnect checked count=%zu", pc->name,
                 settled);
    } else if (kiln_mono_ms() - pc->work_since_ms > PUBCHECK_GIVEUP_MS) {
        LOG_WARN("pubcheck %s: no answer, publishes left unchecked count=%zu", pc->name,
                 pc->work.n);
        while (pc->work.n > 0) free(pubcheck_ring_pop(&pc->work).data);
    }
}

kiln_status kiln_pubcheck_start(kiln_pubcheck *pc)
{
    return kiln_periodic_start(pc->name, PUBCHECK_TICK_MS, pubcheck_tick, pc, &pc->timer);
}

/* On the stopping owner's thread, the checking thread joined: decides about
 * what a reconnect left, for up to finish_ms, waiting while nc reconnects. */
static void pubcheck_finish(kiln_pubcheck *pc, natsConnection *nc, int64_t finish_ms)
{
    pubcheck_gather(pc);
    if (pc->work.n == 0) return;
    LOG_INFO("pubcheck %s: stopping, checking the publishes from before the reconnect first count=%zu",
             pc->name, pc->work.n);
    int64_t until = kiln_mono_ms() + (finish_ms > 0 ? finish_ms : 0);
    size_t settled = 0;
    for (;;) {
        natsConnStatus cs = nc != NULL ? natsConnection_Status(nc) : NATS_CONN_STATUS_CLOSED;
        if (cs == NATS_CONN_STATUS_CLOSED) break;
        /* Reconnecting (the stop can come within a second of an outage):
         * wait for it rather than let every question wait out its timeout. */
        if (cs == NATS_CONN_STATUS_CONNECTED) settled += pubcheck_work(pc, NULL);
        if (pc->work.n == 0 || kiln_mono_ms() + PUBCHECK_TICK_MS >= until) break;
        nats_Sleep(PUBCHECK_TICK_MS);
        pubcheck_gather(pc);
    }
    if (pc->work.n == 0) {
        LOG_INFO("pubcheck %s: publishes from before the reconnect checked before stopping count=%zu",
                 pc->name, settled);
        return;
    }
    LOG_WARN("pubcheck %s: stopping with publishes from before the reconnect unchecked count=%zu "
             "checked=%zu",
             pc->name, pc->work.n, settled);
}

void kiln_pubcheck_stop(kiln_pubcheck *pc, natsConnection *nc, int64_t finish_ms)
{
    if (pc == NULL) return;
    kiln_periodic_stop(pc->timer);
    pc->timer = NULL;
    pubcheck_finish(pc, nc, finish_ms);
}

void kiln_pubcheck_destroy(kiln_pubcheck *pc)
{
    if (pc == NULL) return;
    pubcheck_ring_free(&pc->kept);
    pubcheck_ring_free(&pc->todo);
    pubcheck_ring_free(&pc->work);
    pthread_mutex_destroy(&pc->mu);
    free(pc);
}

kiln_pubcheck_look kiln_pubcheck_look_up(jsCtx *js, const char *stream, const kiln_pubcheck_entry *e)
{
    natsMsg *got = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    if (jsOptions_Init(&jo) != NATS_OK) return KILN_PUBCHECK_UNKNOWN;
    jo.Wait = PUBCHECK_GET_WAIT_MS;
    natsStatus s = js_GetMsg(&got, js, stream, e->seq, &jo, &jerr);
    if (s == NATS_OK) {
        /* The payload names its job and state: another message's differs. */
        bool same = (size_t)natsMsg_GetDataLength(got) == e->len &&
                    (e->len == 0 || memcmp(natsMsg_GetData(got), e->data, e->len) == 0);
        natsMsg_Destroy(got);
        return same ? KILN_PUBCHECK_THERE : KILN_PUBCHECK_LOST;
    }
    if (jerr == JSNoMessageFoundErr || (s == NATS_NOT_FOUND && jerr == 0)) return KILN_PUBCHECK_LOST;
    return KILN_PUBCHECK_UNKNOWN;
}

kiln_status kiln_pubcheck_publish(jsCtx *js, natsMsg *m, const char *msg_id, const char *what,
                                  uint64_t *new_seq, bool *duplicate)
{
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    natsStatus s = jsPubOptions_Init(&po);
    if (s == NATS_OK) {
        po.MsgId = msg_id;
        po.MaxWait = PUBCHECK_GET_WAIT_MS;
        s = js_PublishMsg(&pa, js, m, &po, &jerr);
    }
    if (s != NATS_OK) {
        LOG_DEBUG("pubcheck: publish again failed what=%s status=%s jerr=%d", what,
                  natsStatus_GetText(s), (int)jerr);
        return kiln_nats_status(s);
    }
    if (new_seq != NULL) *new_seq = pa->Sequence;
    if (duplicate != NULL) *duplicate = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return KILN_OK;
}
