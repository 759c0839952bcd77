/* donecheck.c - after a reconnect to NATS, makes sure the announcements
 * the store published shortly before (jobs.done and the events of
 * kiln.events.<user>.<id>) are still in their streams, and publishes again
 * those nats-server lost.
 *
 * Seen in chaos runs with nats-server SIGKILLs (2 of 15 in one round): the
 * store published a job's jobs.done, JetStream confirmed it, the store acked
 * the transition, and ~40 ms later nats-server was killed. The restarted
 * nats-server 2.9.10 did not have the message (why is not known). The
 * store kept the right state, but subscribers of jobs.done never heard of
 * the job's end; an event lost the same way would leave a per-job event
 * stream open without its end.
 *
 * So the apply connection's ack handler hands every confirmed announcement
 * to donecheck_keep, which keeps a copy of its payload (a JobStatus or a
 * JobRecord: subject and headers follow from it) for those of the store's
 * last keep_ms of publishing, at most cap, the oldest going first. First
 * events (EventBatches on kiln.events.<user>.$new) are not kept: re-sent
 * after the jobs' later events, they would put a stale pending state last.
 * When any connection of the store reconnects, everything kept until then is
 * checked: the message its stream (KILN_DONE, KILN_EVENTS: limits retention,
 * nothing consumes them away) holds at its sequence must have the same
 * payload (a restarted server may have given a lost sequence to a newer
 * message). A jobs.done that is not there is published again with its
 * Nats-Msg-Id, so the stream keeps one copy; core subscribers get it again,
 * the at-least-once the contract allows on crash replay. An event that is
 * not there is published again only while the job's record still has the
 * state (and viewed flag) it announced: otherwise a later event announces
 * more, and the old one must not come after it. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "clock.h"
#include "db.h"
#include "done.h"
#include "donecheck.h"
#include "events.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pb.h"
#include "periodic.h"
#include "subjects.h"

#define DONECHECK_TICK_MS 100     /* how soon a reconnect is checked */
#define DONECHECK_GET_WAIT_MS 2000 /* one message look-up or publish */
/* How long a check keeps trying while JetStream does not answer (a server
 * still recovering its streams) before it gives up on what is left. */
#define DONECHECK_GIVEUP_MS 120000

typedef enum {
    DONECHECK_DONE,   /* jobs.done: a JobStatus */
    DONECHECK_EVENT,  /* a state change on kiln.events.<user>.<id>: a JobRecord */
    DONECHECK_VIEWED, /* the viewed flag set, same subject: a JobRecord */
} donecheck_kind;

typedef struct {
    uint8_t *pb; /* the payload; subject and headers follow from it */
    size_t len;
    donecheck_kind kind;
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
    db_store *db;
    jsCtx *js;
    donecheck_ring work;
    int64_t work_since_ms;
    kiln_metric *m_checked, *m_done_again, *m_events_again;
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

/* Appends e; when full, the oldest is pushed out into *dropped (pb NULL
 * when nothing was). */
static void donecheck_ring_push(donecheck_ring *r, donecheck_entry e, donecheck_entry *dropped)
{
    dropped->pb = NULL;
    if (r->n == r->cap) *dropped = donecheck_ring_pop(r);
    *donecheck_ring_at(r, r->n) = e;
    r->n++;
}

static void donecheck_ring_free(donecheck_ring *r)
{
    while (r->n > 0) free(donecheck_ring_pop(r).pb);
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
        if (dropped.pb != NULL) {
            free(dropped.pb);
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
    dc->m_checked = kiln_metric_counter(
        "kiln_store_announcements_rechecked_total",
        "jobs.done and events looked up in their stream after a reconnect to NATS");
    dc->m_done_again = kiln_metric_counter(
        "kiln_store_done_reannounced_total",
        "jobs.done published again because nats-server lost it after confirming it");
    dc->m_events_again = kiln_metric_counter(
        "kiln_store_events_reannounced_total",
        "events published again because nats-server lost them after confirming them");
    *out = dc;
    return KILN_OK;
}

/* What msg is, when it is kept: false for anything else. */
static bool donecheck_kind_of(natsMsg *msg, donecheck_kind *kind)
{
    const char *subj = natsMsg_GetSubject(msg), *key = NULL;
    size_t n = strlen(subj), np = strlen(KILN_SUBJ_EVENTS_PREFIX);
    if (strcmp(subj, KILN_SUBJ_DONE) == 0) {
        *kind = DONECHECK_DONE;
        return true;
    }
    if (n <= np || strncmp(subj, KILN_SUBJ_EVENTS_PREFIX, np) != 0 ||
        (n >= 5 && strcmp(subj + n - 5, ".$new") == 0))
        return false;
    /* Job ids have no dots, so ".viewed." names the viewed flag's key. */
    bool viewed = natsMsgHeader_Get(msg, KILN_HDR_EVENT_KEY, &key) == NATS_OK &&
                  strstr(key, ".viewed.") != NULL;
    *kind = viewed ? DONECHECK_VIEWED : DONECHECK_EVENT;
    return true;
}

void donecheck_keep(donecheck *dc, natsMsg *msg, uint64_t seq)
{
    donecheck_kind kind;
    if (!donecheck_kind_of(msg, &kind)) return;
    int len = natsMsg_GetDataLength(msg);
    donecheck_entry e = {malloc(len > 0 ? (size_t)len : 1), (size_t)len, kind, seq, kiln_mono_ms()};
    donecheck_entry dropped, old[4];
    size_t nold = 0;
    if (e.pb == NULL) return; /* out of memory: this one goes unchecked */
    if (len > 0) memcpy(e.pb, natsMsg_GetData(msg), (size_t)len);
    pthread_mutex_lock(&dc->mu);
    size_t lost = donecheck_take_reconnect(dc);
    /* keep_ms of the store's latest publishing, not of wall time: what a
     * crash loses is the server's latest writes, however long ago. */
    while (nold < sizeof old / sizeof old[0] && dc->kept.n > 0 &&
           donecheck_ring_at(&dc->kept, 0)->at_ms < e.at_ms - dc->keep_ms)
        old[nold++] = donecheck_ring_pop(&dc->kept);
    donecheck_ring_push(&dc->kept, e, &dropped);
    pthread_mutex_unlock(&dc->mu);
    free(dropped.pb); /* the oldest: cap is the limit under load */
    for (size_t i = 0; i < nold; i++) free(old[i].pb);
    if (lost > 0) LOG_WARN("donecheck: too many announcements to check, oldest not checked count=%zu", lost);
}

/* Whether the message the stream holds at a kept one's sequence is that
 * one. The payload names its job, state and times: another message's
 * differs. */
static bool donecheck_same(const donecheck_entry *e, natsMsg *stored)
{
    return (size_t)natsMsg_GetDataLength(stored) == e->len &&
           (e->len == 0 || memcmp(natsMsg_GetData(stored), e->pb, e->len) == 0);
}

typedef enum { DONECHECK_THERE, DONECHECK_LOST, DONECHECK_UNKNOWN } donecheck_verdict;

static donecheck_verdict donecheck_look(donecheck *dc, const donecheck_entry *e)
{
    natsMsg *got = NULL;
    jsErrCode jerr = 0;
    jsOptions jo;
    if (jsOptions_Init(&jo) != NATS_OK) return DONECHECK_UNKNOWN;
    jo.Wait = DONECHECK_GET_WAIT_MS;
    const char *stream = e->kind == DONECHECK_DONE ? KILN_STREAM_DONE : KILN_STREAM_EVENTS;
    natsStatus s = js_GetMsg(&got, dc->js, stream, e->seq, &jo, &jerr);
    if (s == NATS_OK) {
        donecheck_verdict v = donecheck_same(e, got) ? DONECHECK_THERE : DONECHECK_LOST;
        natsMsg_Destroy(got);
        return v;
    }
    if (jerr == JSNoMessageFoundErr || (s == NATS_NOT_FOUND && jerr == 0)) return DONECHECK_LOST;
    return DONECHECK_UNKNOWN;
}

/* Publishes the kept jobs.done again, built as the apply loop builds it. */
static bool donecheck_done_again(donecheck *dc, const donecheck_entry *e)
{
    Kiln__V1__JobStatus *js = kiln__v1__job_status__unpack(NULL, e->len, e->pb);
    if (js == NULL || js->id == NULL || strlen(js->id) > KILN_ID_MAX_LEN) {
        LOG_WARN("donecheck: a kept jobs.done does not decode, dropped seq=%" PRIu64, e->seq);
        kiln__v1__job_status__free_unpacked(js, NULL);
        return true; /* nothing to publish: not worth another try */
    }
    apply_done d = {.state = js->state, .status_pb = e->pb, .status_len = e->len};
    snprintf(d.id, sizeof d.id, "%s", js->id);
    kiln__v1__job_status__free_unpacked(js, NULL);

    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    natsStatus s = jsPubOptions_Init(&po);
    if (s == NATS_OK && done_message(&d, &m) != KILN_OK) s = NATS_ERR;
    if (s == NATS_OK) {
        po.MaxWait = DONECHECK_GET_WAIT_MS;
        s = js_PublishMsg(&pa, dc->js, m, &po, &jerr);
    }
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        LOG_DEBUG("donecheck: publish again failed job=%s status=%s jerr=%d", d.id,
                  natsStatus_GetText(s), (int)jerr);
        return false;
    }
    LOG_WARN("donecheck: jobs.done lost by nats-server after it confirmed it, published again "
             "job=%s seq=%" PRIu64 " new_seq=%" PRIu64 " duplicate=%d",
             d.id, e->seq, pa->Sequence, (int)pa->Duplicate);
    jsPubAck_Destroy(pa);
    kiln_metric_add(dc->m_done_again, 1);
    return true;
}

/* Whether the job's record still says what the kept event announced. */
static bool donecheck_still_current(donecheck *dc, const donecheck_entry *e,
                                    const Kiln__V1__JobRecord *ev)
{
    Kiln__V1__JobRecord *now = NULL;
    if (db_load_record(dc->db, NULL, NULL, ev->request->id, &now) != KILN_OK) return false;
    bool same = now->status != NULL && now->status->state == ev->status->state &&
                now->status->attempts == ev->status->attempts &&
                (e->kind != DONECHECK_VIEWED || now->viewed);
    kiln__v1__job_record__free_unpacked(now, NULL);
    return same;
}

/* Publishes the kept event again when its job's record still says what it
 * announced (a later event otherwise says more); false when that was meant
 * to happen and failed. */
static bool donecheck_event_again(donecheck *dc, const donecheck_entry *e)
{
    Kiln__V1__JobRecord *ev = kiln__v1__job_record__unpack(NULL, e->len, e->pb);
    if (ev == NULL || ev->request == NULL || ev->request->id == NULL || ev->status == NULL) {
        LOG_WARN("donecheck: a kept event does not decode, dropped seq=%" PRIu64, e->seq);
        kiln__v1__job_record__free_unpacked(ev, NULL);
        return true;
    }
    bool ok = true;
    if (!donecheck_still_current(dc, e, ev)) {
        LOG_DEBUG("donecheck: event lost by nats-server, a later one supersedes it job=%s seq=%" PRIu64,
                  ev->request->id, e->seq);
    } else {
        events_list l = {0};
        /* As a replay: skipped if its subject's last event already has its key. */
        kiln_status st = events_add_replayed(&l, ev, e->kind == DONECHECK_VIEWED ? EVENTS_VIEWED : EVENTS_STATE);
        if (st == KILN_OK) st = events_publish_sync(dc->js, &l, 1);
        events_free(&l);
        ok = st == KILN_OK;
        if (ok) {
            LOG_WARN("donecheck: event lost by nats-server after it confirmed it, published again "
                     "job=%s state=%s seq=%" PRIu64,
                     ev->request->id, kiln_state_name(ev->status->state), e->seq);
            kiln_metric_add(dc->m_events_again, 1);
        }
    }
    kiln__v1__job_record__free_unpacked(ev, NULL);
    return ok;
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
        if (dropped.pb != NULL) {
            free(dropped.pb);
            lost++;
        }
    }
    pthread_mutex_unlock(&dc->mu);
    if (lost > 0) LOG_WARN("donecheck: too many announcements to check, oldest not checked count=%zu", lost);
    if (dc->work.n == 0) return;

    size_t n0 = dc->work.n, reannounced = 0;
    while (dc->work.n > 0 && !kiln_periodic_stopping(p)) {
        donecheck_entry *e = donecheck_ring_at(&dc->work, 0);
        donecheck_verdict v = donecheck_look(dc, e);
        if (v == DONECHECK_UNKNOWN) break;
        if (v == DONECHECK_LOST) {
            bool ok = e->kind == DONECHECK_DONE ? donecheck_done_again(dc, e) : donecheck_event_again(dc, e);
            if (!ok) break;
            reannounced++;
        }
        kiln_metric_add(dc->m_checked, 1);
        free(donecheck_ring_pop(&dc->work).pb);
    }
    if (dc->work.n == 0) {
        LOG_INFO("donecheck: announcements from before the reconnect checked count=%zu lost=%zu",
                 n0, reannounced);
    } else if (kiln_mono_ms() - dc->work_since_ms > DONECHECK_GIVEUP_MS) {
        LOG_WARN("donecheck: JetStream did not answer, announcements left unchecked count=%zu",
                 dc->work.n);
        while (dc->work.n > 0) free(donecheck_ring_pop(&dc->work).pb);
    }
}

kiln_status donecheck_start(donecheck *dc, db_store *db, jsCtx *js)
{
    dc->db = db;
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
