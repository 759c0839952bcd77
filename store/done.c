/* done.c - publishing a written batch's announcements: jobs.done and
 * kiln.events.* (JetStream) and kiln.cancelled.<id> (core NATS).
 *
 * jobs.done carries the JobStatus, headers Kiln-Job-Id, Kiln-Status (state
 * name) and Nats-Msg-Id "<id>.done" so a re-publish after a crash is dropped
 * by KILN_DONE's duplicate window. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "done.h"
#include "donecheck.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

#define DONE_WAIT_SLICE_MS 200 /* how soon done_wait notices a stop or a reconnect */
#define DONE_STOP_WAIT_MS 1000 /* how long it still waits after one */
/* After a reconnect, how long acks of publishes sent before it may still
 * come (those libnats had not yet written go out again on the new
 * connection); the rest went to a server that is gone. */
#define DONE_RECONNECT_GRACE_MS 500

static _Atomic uint64_t done_failed;
/* kiln_nats_reconnected_at() when the publishes now pending went out (the
 * apply thread's own: it publishes, republishes and waits). */
static int64_t done_sent_reconnect;

/* Messages JetStream refused or did not confirm, kept (owned here) for
 * done_republish_refused; the ack handler adds, the apply thread takes. */
static pthread_mutex_t done_refused_mu = PTHREAD_MUTEX_INITIALIZER;
static natsMsg **done_refused;
static size_t done_refused_n, done_refused_cap;

/* Keeps msg; false (msg not kept) when out of memory. */
static bool done_keep_refused(natsMsg *msg)
{
    bool kept = false;
    pthread_mutex_lock(&done_refused_mu);
    if (done_refused_n == done_refused_cap) {
        size_t cap = done_refused_cap != 0 ? 2 * done_refused_cap : 64;
        natsMsg **grown = realloc(done_refused, cap * sizeof *grown);
        if (grown != NULL) {
            done_refused = grown;
            done_refused_cap = cap;
        }
    }
    if (done_refused_n < done_refused_cap) {
        done_refused[done_refused_n++] = msg;
        kept = true;
    }
    pthread_mutex_unlock(&done_refused_mu);
    return kept;
}

void done_on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    if (pa != NULL && closure != NULL && msg != NULL)
        donecheck_keep(closure, msg, pa->Sequence); /* checked after a reconnect */
    if (pae != NULL) {
        const char *id = NULL;
        if (msg == NULL || natsMsgHeader_Get(msg, KILN_HDR_JOB_ID, &id) != NATS_OK) id = "-";
        atomic_fetch_add(&done_failed, 1);
        LOG_WARN("publish failed subject=%s job=%s status=%s err=\"%s\"",
                 msg != NULL ? natsMsg_GetSubject(msg) : "-", id, natsStatus_GetText(pae->Err),
                 pae->ErrText != NULL ? pae->ErrText : "");
        if (msg != NULL && done_keep_refused(msg)) return;
    }
    natsMsg_Destroy(msg);
}

size_t done_republish_refused(jsCtx *js)
{
    pthread_mutex_lock(&done_refused_mu);
    natsMsg **msgs = done_refused;
    size_t n = done_refused_n;
    done_refused = NULL;
    done_refused_n = done_refused_cap = 0;
    pthread_mutex_unlock(&done_refused_mu);
    if (js != NULL && n > 0) done_sent_reconnect = kiln_nats_reconnected_at();
    for (size_t i = 0; i < n; i++) {
        /* The library owns it from here (it comes back to the handler);
         * jobs.done keeps its Nats-Msg-Id, so KILN_DONE holds one copy. */
        if (js == NULL) {
            natsMsg_Destroy(msgs[i]);
        } else if (js_PublishMsgAsync(js, &msgs[i], NULL) != NATS_OK) {
            /* Not handed over: a failure done_wait sees, kept for the next try. */
            atomic_fetch_add(&done_failed, 1);
            if (!done_keep_refused(msgs[i])) natsMsg_Destroy(msgs[i]);
        }
    }
    free(msgs);
    return n;
}

uint64_t done_failures(void) { return atomic_load(&done_failed); }

kiln_status done_message(const apply_done *d, natsMsg **out)
{
    natsMsg *m = NULL;
    char msgid[KILN_ID_MAX_LEN + 16];
    snprintf(msgid, sizeof msgid, "%s.done", d->id);
    natsStatus s = natsMsg_Create(&m, KILN_SUBJ_DONE, NULL, (const char *)d->status_pb,
                                  (int)d->status_len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_JOB_ID, d->id);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_STATUS, kiln_state_name(d->state));
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_MSG_ID, msgid);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return kiln_nats_status(s);
    }
    *out = m;
    return KILN_OK;
}

kiln_status done_publish_async(jsCtx *js, const apply_done_list *l, const events_list *ev)
{
    done_sent_reconnect = kiln_nats_reconnected_at();
    for (size_t i = 0; i < l->n; i++) {
        natsMsg *m = NULL;
        kiln_status st = done_message(&l->items[i], &m);
        if (st != KILN_OK) return st;
        natsStatus s = js_PublishMsgAsync(js, &m, NULL);
        natsMsg_Destroy(m); /* NULL when the library took it */
        if (s != NATS_OK) {
            LOG_WARN("jobs.done publish failed job=%s status=%s", l->items[i].id,
                     natsStatus_GetText(s));
            return kiln_nats_status(s);
        }
    }
    return events_publish_async(js, ev);
}

/* Takes every publish still waiting for its ack back from nats.c and keeps
 * it as refused (done_republish_refused publishes it again). An ack that
 * never comes (nats-server killed after reading the publish, or the store
 * paused across a restart) would otherwise stay pending for good, and every
 * later done_wait would time out: the apply loop would apply nothing until
 * the store restarted (chaos run 616). nats.c drops an ack that comes after
 * this; the publish then goes twice (jobs.done: one copy kept by its
 * Nats-Msg-Id). Per-publish timeouts (jsPubOptions.MaxWait) would do the
 * same, but nats.c 3.4.1 then queues a timer message per publish. done_wait
 * does this at its timeout, or DONE_RECONNECT_GRACE_MS after a reconnect
 * that came after the publishes went out: waiting the whole timeout there
 * left a window in which a store stopped dropped them (chaos run 903). */
static void done_take_unacked(jsCtx *js)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, js) != NATS_OK) return;
    size_t kept = 0;
    for (int i = 0; i < pending.Count; i++) {
        atomic_fetch_add(&done_failed, 1);
        if (done_keep_refused(pending.Msgs[i])) {
            pending.Msgs[i] = NULL; /* owned by the refused list now */
            kept++;
        }
    }
    LOG_WARN("jobs.done/events without an ack taken back to publish again msgs=%d kept=%zu",
             pending.Count, kept);
    natsMsgList_Destroy(&pending);
}

kiln_status done_wait(jsCtx *js, uint64_t failed0, int64_t timeout_ms, const atomic_bool *stop)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    int64_t until = kiln_mono_ms() + timeout_ms;
    bool stop_seen = false;
    natsStatus s = NATS_TIMEOUT;
    for (;;) {
        int64_t now = kiln_mono_ms();
        if (stop != NULL && !stop_seen && atomic_load(stop)) {
            stop_seen = true;
            if (now + DONE_STOP_WAIT_MS < until) until = now + DONE_STOP_WAIT_MS;
        }
        int64_t left = until - now;
        if (left <= 0) break;
        /* In slices while a stop may come; the acks usually end the first. */
        po.MaxWait = stop != NULL && left > DONE_WAIT_SLICE_MS ? DONE_WAIT_SLICE_MS : left;
        s = js_PublishAsyncComplete(js, &po);
        if (s != NATS_TIMEOUT) break;
        int64_t rc = kiln_nats_reconnected_at();
        if (rc != done_sent_reconnect && kiln_mono_ms() - rc >= DONE_RECONNECT_GRACE_MS) {
            LOG_WARN("jobs.done/events sent before a reconnect to NATS still unconfirmed");
            break;
        }
    }
    if (s != NATS_OK) {
        LOG_WARN("jobs.done/event acks incomplete status=%s", natsStatus_GetText(s));
        done_take_unacked(js);
        return kiln_nats_status(s);
    }
    if (done_failures() != failed0) return KILN_ENATS;
    return KILN_OK;
}

kiln_status done_broadcast_cancelled(natsConnection *nc, const char *id)
{
    char subj[sizeof KILN_SUBJ_CANCELLED_PREFIX + KILN_ID_MAX_LEN];
    snprintf(subj, sizeof subj, "%s%s", KILN_SUBJ_CANCELLED_PREFIX, id);
    natsStatus s = natsConnection_Publish(nc, subj, NULL, 0);
    if (s != NATS_OK) {
        LOG_WARN("cancel broadcast failed job=%s status=%s", id, natsStatus_GetText(s));
        return kiln_nats_status(s);
    }
    return KILN_OK;
}
