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
 * So the apply connection's ack handler shows every confirmed announcement
 * to donecheck_keep, which keeps a copy of its payload (a JobStatus or a
 * JobRecord: subject and headers follow from it) for those of the store's
 * last keep_ms of publishing, at most cap (common/pubcheck.c); first
 * events (EventBatches on kiln.events.<user>.$new) too. When any connection of the store reconnects, everything kept until then is
 * checked: the message its stream (KILN_DONE, KILN_EVENTS: limits retention,
 * nothing consumes them away) holds at its sequence must have the same
 * payload (a restarted server may have given a lost sequence to a newer
 * message). A jobs.done that is not there is published again with its
 * Nats-Msg-Id, so the stream keeps one copy; core subscribers get it again,
 * the at-least-once the contract allows on crash replay. An event that is
 * not there is published again only while the job's record still has the
 * state (and viewed flag) it announced: otherwise a later event announces
 * more, and the old one must not come after it. A lost EventBatch of first
 * events goes again as a batch of those of its jobs that are still pending
 * and unviewed. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "done.h"
#include "donecheck.h"
#include "events.h"
#include "log.h"
#include "metrics.h"
#include "pb.h"
#include "pubcheck.h"
#include "subjects.h"

typedef enum {
    DONECHECK_DONE,   /* jobs.done: a JobStatus */
    DONECHECK_EVENT,  /* a state change on kiln.events.<user>.<id>: a JobRecord */
    DONECHECK_VIEWED, /* the viewed flag set, same subject: a JobRecord */
    DONECHECK_FIRST,  /* first events on kiln.events.<user>.$new: an EventBatch */
} donecheck_kind;

struct donecheck {
    kiln_pubcheck *pc;
    db_store *db; /* set by donecheck_start */
    natsConnection *nc; /* js's */
    jsCtx *js;
    kiln_metric *m_checked, *m_done_again, *m_events_again;
};

/* What msg is, when it is kept: false for anything else. */
static bool donecheck_kind_of(natsMsg *msg, donecheck_kind *kind)
{
    const char *subj = natsMsg_GetSubject(msg), *key = NULL;
    size_t n = strlen(subj), np = strlen(KILN_SUBJ_EVENTS_PREFIX);
    if (strcmp(subj, KILN_SUBJ_DONE) == 0) {
        *kind = DONECHECK_DONE;
        return true;
    }
    if (n <= np || strncmp(subj, KILN_SUBJ_EVENTS_PREFIX, np) != 0) return false;
    if (n >= 5 && strcmp(subj + n - 5, ".$new") == 0) {
        *kind = DONECHECK_FIRST;
        return true;
    }
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
    kiln_pubcheck_keep(dc->pc, natsMsg_GetData(msg), len > 0 ? (size_t)len : 0, (int)kind, seq);
}

/* Publishes a lost jobs.done again, built as the apply loop builds it. */
static kiln_pubcheck_result donecheck_done_again(donecheck *dc, const kiln_pubcheck_entry *e)
{
    Kiln__V1__JobStatus *st = kiln__v1__job_status__unpack(NULL, e->len, e->data);
    if (st == NULL || st->id == NULL || strlen(st->id) > KILN_ID_MAX_LEN) {
        LOG_WARN("donecheck: a kept jobs.done does not decode, dropped seq=%" PRIu64, e->seq);
        kiln__v1__job_status__free_unpacked(st, NULL);
        return KILN_PUBCHECK_SETTLED; /* nothing to publish */
    }
    apply_done d = {.state = st->state, .status_pb = e->data, .status_len = e->len};
    snprintf(d.id, sizeof d.id, "%s", st->id);
    kiln__v1__job_status__free_unpacked(st, NULL);

    natsMsg *m = NULL;
    uint64_t new_seq = 0;
    bool dup = false;
    kiln_status ks = done_message(&d, &m);
    if (ks == KILN_OK) ks = kiln_pubcheck_publish(dc->js, m, NULL, d.id, &new_seq, &dup);
    natsMsg_Destroy(m);
    if (ks != KILN_OK) return KILN_PUBCHECK_RETRY;
    LOG_WARN("donecheck: jobs.done lost by nats-server after it confirmed it, published again "
             "job=%s seq=%" PRIu64 " new_seq=%" PRIu64 " duplicate=%d",
             d.id, e->seq, new_seq, (int)dup);
    kiln_metric_add(dc->m_done_again, 1);
    return KILN_PUBCHECK_SETTLED;
}

/* Whether the job's record still says what the lost event announced
 * (state, attempts and viewed flag): a record that moved on had a later
 * event, which must stay last. */
static bool donecheck_still_current(donecheck *dc, const Kiln__V1__JobRecord *ev)
{
    Kiln__V1__JobRecord *now = NULL;
    if (db_load_record(dc->db, NULL, NULL, ev->request->id, &now) != KILN_OK) return false;
    bool same = now->status != NULL && now->status->state == ev->status->state &&
                now->status->attempts == ev->status->attempts && now->viewed == ev->viewed;
    kiln__v1__job_record__free_unpacked(now, NULL);
    return same;
}

/* Publishes a lost event again when its job's record still says what it
 * announced (a later event otherwise says more, and must stay last). */
static kiln_pubcheck_result donecheck_event_again(donecheck *dc, const kiln_pubcheck_entry *e)
{
    Kiln__V1__JobRecord *ev = kiln__v1__job_record__unpack(NULL, e->len, e->data);
    if (ev == NULL || ev->request == NULL || ev->request->id == NULL || ev->status == NULL) {
        LOG_WARN("donecheck: a kept event does not decode, dropped seq=%" PRIu64, e->seq);
        kiln__v1__job_record__free_unpacked(ev, NULL);
        return KILN_PUBCHECK_SETTLED;
    }
    kiln_pubcheck_result r = KILN_PUBCHECK_SETTLED;
    if (!donecheck_still_current(dc, ev)) {
        LOG_DEBUG("donecheck: event lost by nats-server, a later one supersedes it job=%s seq=%" PRIu64,
                  ev->request->id, e->seq);
    } else {
        events_list l = {0};
        /* As a replay: skipped if its subject's last event already has its key. */
        kiln_status st = events_add_replayed(&l, ev, e->kind == DONECHECK_VIEWED ? EVENTS_VIEWED : EVENTS_STATE);
        if (st == KILN_OK) st = events_publish_sync(dc->js, &l, 1);
        events_free(&l);
        if (st == KILN_OK) {
            LOG_WARN("donecheck: event lost by nats-server after it confirmed it, published again "
                     "job=%s state=%s seq=%" PRIu64,
                     ev->request->id, kiln_state_name(ev->status->state), e->seq);
            kiln_metric_add(dc->m_events_again, 1);
        } else {
            r = KILN_PUBCHECK_RETRY;
        }
    }
    kiln__v1__job_record__free_unpacked(ev, NULL);
    return r;
}

/* Publishes again, in a batch of their own, the first events of a lost
 * EventBatch whose jobs are still where they were (pending, not viewed): a
 * job that moved on had later events, and its first must not follow them. */
static kiln_pubcheck_result donecheck_first_again(donecheck *dc, const kiln_pubcheck_entry *e)
{
    Kiln__V1__EventBatch *b = kiln__v1__event_batch__unpack(NULL, e->len, e->data);
    if (b == NULL) {
        LOG_WARN("donecheck: a kept first-event batch does not decode, dropped seq=%" PRIu64, e->seq);
        return KILN_PUBCHECK_SETTLED;
    }
    events_list l = {0};
    kiln_status st = KILN_OK;
    for (size_t i = 0; st == KILN_OK && i < b->n_records; i++) {
        Kiln__V1__JobRecord *ev = kiln__v1__job_record__unpack(NULL, b->records[i].len, b->records[i].data);
        if (ev != NULL && ev->request != NULL && ev->request->id != NULL && ev->status != NULL &&
            donecheck_still_current(dc, ev) &&
            events_add_replayed(&l, ev, EVENTS_STATE) == KILN_ENOMEM) /* skipped if a later batch holds it */
            st = KILN_ENOMEM; /* asked again next tick; an invalid record is left out */
        kiln__v1__job_record__free_unpacked(ev, NULL);
    }
    size_t again = l.n, jobs = b->n_records;
    kiln__v1__event_batch__free_unpacked(b, NULL);
    if (st == KILN_OK && again > 0) st = events_publish_sync(dc->js, &l, 1);
    events_free(&l);
    if (st != KILN_OK) return KILN_PUBCHECK_RETRY;
    if (again == 0) {
        LOG_DEBUG("donecheck: first events lost by nats-server, later ones supersede them jobs=%zu "
                  "seq=%" PRIu64, jobs, e->seq);
        return KILN_PUBCHECK_SETTLED;
    }
    LOG_WARN("donecheck: first events lost by nats-server after it confirmed them, published again "
             "jobs=%zu of=%zu seq=%" PRIu64,
             again, jobs, e->seq);
    kiln_metric_add(dc->m_events_again, (int64_t)again);
    return KILN_PUBCHECK_SETTLED;
}

static kiln_pubcheck_result donecheck_check(const kiln_pubcheck_entry *e, void *arg)
{
    donecheck *dc = arg;
    bool done = e->kind == DONECHECK_DONE;
    kiln_pubcheck_look look = kiln_pubcheck_look_up(dc->js, done ? KILN_STREAM_DONE : KILN_STREAM_EVENTS, e);
    if (look == KILN_PUBCHECK_UNKNOWN) return KILN_PUBCHECK_RETRY;
    kiln_pubcheck_result r = KILN_PUBCHECK_SETTLED;
    if (look == KILN_PUBCHECK_LOST)
        r = done                           ? donecheck_done_again(dc, e)
            : e->kind == DONECHECK_FIRST ? donecheck_first_again(dc, e)
                                         : donecheck_event_again(dc, e);
    if (r == KILN_PUBCHECK_SETTLED) kiln_metric_add(dc->m_checked, 1);
    return r;
}

kiln_status donecheck_create(int64_t keep_ms, size_t cap, donecheck **out)
{
    *out = NULL;
    donecheck *dc = calloc(1, sizeof *dc);
    if (dc == NULL) return KILN_ENOMEM;
    if (kiln_pubcheck_create("kiln-donecheck", keep_ms, cap, donecheck_check, dc, &dc->pc) != KILN_OK) {
        free(dc);
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

kiln_status donecheck_start(donecheck *dc, db_store *db, natsConnection *nc, jsCtx *js)
{
    dc->db = db;
    dc->nc = nc;
    dc->js = js;
    return kiln_pubcheck_start(dc->pc);
}

void donecheck_stop(donecheck *dc)
{
    if (dc != NULL) kiln_pubcheck_stop(dc->pc, dc->nc, KILN_PUBCHECK_FINISH_MS);
}

void donecheck_destroy(donecheck *dc)
{
    if (dc == NULL) return;
    kiln_pubcheck_destroy(dc->pc);
    free(dc);
}
