/* txcheck.c - after a reconnect to NATS, makes sure the transitions this
 * consumer published shortly before reached the store, and publishes again
 * each one nats-server lost.
 *
 * nats-server 2.9.10 can lose messages it confirmed in the last moments
 * before it is killed (store/donecheck.c). A lost `completed` transition
 * left its job `processing` while the consumer had acked the job: nothing
 * ran it until the store's sweep took it as abandoned (timeout_s + 60 s)
 * and re-drove it, a second provider call for a result already saved. So
 * the publish-ack handler shows every confirmed kiln.tx message to
 * cons_txcheck_keep, which keeps its payload for the consumer's last
 * TXCHECK_KEEP_MS of publishing (common/pubcheck.c), and after a reconnect
 * each is checked:
 * - KILN_JOBS still holds it at its sequence: the store will read it;
 * - it does not: the store's durable is the only one that wants kiln.tx,
 *   and the store acks only what it wrote, so the message was applied or
 *   lost. The store is asked (a sync kiln.store.check: it first applies
 *   all it holds) about the jobs of its transitions, and a transition goes
 *   again, alone with its Nats-Msg-Id, only when the job's record is behind
 *   it (txcheck_rank): one the store applied, or that a later one
 *   passed, must not take the record back (a `processing` after the
 *   attempt's retry was recorded would show a waiting job as running);
 * - JetStream or the store does not answer: asked again 100 ms later, for
 *   up to 2 minutes. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cons.h"
#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pb.h"
#include "pubcheck.h"
#include "subjects.h"

/* Of the consumer's latest transition publishing: the losses seen were of
 * the last ~40 ms. 2 s of W2's transitions took ~5 MB of the consumer's
 * 32 MiB goal; half a second takes about a quarter of that. */
#define TXCHECK_KEEP_MS 500
#define TXCHECK_CAP 8192       /* a round's batch or one transition each */
#define TXCHECK_WAIT_MS 2000   /* one store question */

enum { TXCHECK_SINGLE = 0, TXCHECK_BATCH = 1 }; /* kiln_pubcheck_entry.kind */

static kiln_pubcheck *txcheck_pc;
static kiln_metric *txcheck_m_again;

void cons_txcheck_keep(natsMsg *msg, uint64_t seq)
{
    const char *batch = NULL;
    if (txcheck_pc == NULL || strcmp(natsMsg_GetSubject(msg), KILN_SUBJ_TRANSITION) != 0) return;
    int kind = natsMsgHeader_Get(msg, KILN_HDR_TX_BATCH, &batch) == NATS_OK ? TXCHECK_BATCH : TXCHECK_SINGLE;
    int len = natsMsg_GetDataLength(msg);
    kiln_pubcheck_keep(txcheck_pc, natsMsg_GetData(msg), len > 0 ? (size_t)len : 0, kind, seq);
}

/* The transitions of a kept message, each unpacked (NULL where one does
 * not decode); *n of them. Free with txcheck_free. */
static Kiln__V1__JobTransition **txcheck_unpack(const kiln_pubcheck_entry *e, size_t *n)
{
    *n = 0;
    if (e->kind == TXCHECK_SINGLE) {
        Kiln__V1__JobTransition **t = calloc(1, sizeof *t);
        if (t == NULL) return NULL;
        t[0] = kiln__v1__job_transition__unpack(NULL, e->len, e->data);
        *n = 1;
        return t;
    }
    Kiln__V1__TransitionBatch *tb = kiln__v1__transition_batch__unpack(NULL, e->len, e->data);
    if (tb == NULL || tb->n_transitions == 0) {
        kiln__v1__transition_batch__free_unpacked(tb, NULL);
        return NULL;
    }
    Kiln__V1__JobTransition **t = calloc(tb->n_transitions, sizeof *t);
    if (t != NULL) {
        for (size_t i = 0; i < tb->n_transitions; i++)
            t[i] = kiln__v1__job_transition__unpack(NULL, tb->transitions[i].len, tb->transitions[i].data);
        *n = tb->n_transitions;
    }
    kiln__v1__transition_batch__free_unpacked(tb, NULL);
    return t;
}

static void txcheck_free(Kiln__V1__JobTransition **t, size_t n)
{
    for (size_t i = 0; i < n; i++) kiln__v1__job_transition__free_unpacked(t[i], NULL);
    free(t);
}

static bool txcheck_usable(const Kiln__V1__JobTransition *t)
{
    return t != NULL && t->request != NULL && t->request->id != NULL && t->request->id[0] != '\0' &&
           strlen(t->request->id) <= KILN_ID_MAX_LEN;
}

/* Publishes transition t alone, as publish.c does; true when JetStream took it. */
static bool txcheck_publish(const Kiln__V1__JobTransition *t)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char msg_id[KILN_ID_MAX_LEN + 40];
    if (kiln_pb_pack(&t->base, &buf, &len) != KILN_OK) return false;
    snprintf(msg_id, sizeof msg_id, "%s.%u.%s", t->request->id, t->attempt, kiln_state_name(t->state));
    natsMsg *m = NULL;
    uint64_t new_seq = 0;
    bool dup = false;
    kiln_status ks = kiln_nats_status(natsMsg_Create(&m, KILN_SUBJ_TRANSITION, NULL, (const char *)buf, (int)len));
    if (ks == KILN_OK) ks = kiln_nats_status(natsMsgHeader_Set(m, KILN_HDR_JOB_ID, t->request->id));
    if (ks == KILN_OK) ks = kiln_pubcheck_publish(cons_g.js, m, msg_id, msg_id, &new_seq, &dup);
    natsMsg_Destroy(m);
    free(buf);
    if (ks != KILN_OK) return false;
    LOG_WARN("txcheck: transition lost by nats-server after it confirmed it, published again "
             "job=%s attempt=%u state=%s new_seq=%" PRIu64 " duplicate=%d",
             t->request->id, t->attempt, kiln_state_name(t->state), new_seq, (int)dup);
    kiln_metric_add(txcheck_m_again, 1);
    return true;
}

/* Where a job stands, in the order its transitions come: the first
 * pending (attempt 0), then per attempt a processing, a retry's pending and
 * the terminal state. */
static uint64_t txcheck_rank(Kiln__V1__JobState state, unsigned attempt)
{
    uint64_t base = 3 * (uint64_t)attempt;
    if (kiln_state_is_terminal(state)) return base + 3;
    if (state == KILN__V1__JOB_STATE__JOB_STATE_PENDING) return attempt == 0 ? 0 : base + 2;
    return base + 1; /* processing */
}

/* Whether the store's record (info) is behind transition t. */
static bool txcheck_behind(const cons_store_info *info, const Kiln__V1__JobTransition *t)
{
    if (!info->known) return true; /* the store builds the record from t */
    if (kiln_state_is_terminal(info->state)) return false;
    return txcheck_rank(info->state, info->attempts) < txcheck_rank(t->state, t->attempt);
}

/* A lost message's transitions: those the job's record is behind go again. */
static kiln_pubcheck_result txcheck_lost(const kiln_pubcheck_entry *e)
{
    size_t n = 0;
    Kiln__V1__JobTransition **t = txcheck_unpack(e, &n);
    if (t == NULL) {
        LOG_WARN("txcheck: a kept transition does not decode, dropped seq=%" PRIu64, e->seq);
        return KILN_PUBCHECK_SETTLED;
    }
    const char **ids = calloc(n, sizeof *ids);
    cons_store_info *info = calloc(n, sizeof *info);
    kiln_pubcheck_result r = KILN_PUBCHECK_RETRY;
    if (ids != NULL && info != NULL) {
        for (size_t i = 0; i < n; i++) ids[i] = txcheck_usable(t[i]) ? t[i]->request->id : NULL;
        if (cons_store_check(ids, n, true, TXCHECK_WAIT_MS, info) == KILN_OK) {
            r = KILN_PUBCHECK_SETTLED;
            for (size_t i = 0; i < n && r == KILN_PUBCHECK_SETTLED; i++) {
                if (ids[i] == NULL) continue;
                if (!info[i].answered) r = KILN_PUBCHECK_RETRY;
                else if (txcheck_behind(&info[i], t[i]) && !txcheck_publish(t[i])) r = KILN_PUBCHECK_RETRY;
            }
        }
    }
    free(ids);
    free(info);
    txcheck_free(t, n);
    return r;
}

static kiln_pubcheck_result txcheck_check(const kiln_pubcheck_entry *e, void *arg)
{
    (void)arg;
    kiln_pubcheck_look look = kiln_pubcheck_look_up(cons_g.js, KILN_STREAM_JOBS, e);
    if (look == KILN_PUBCHECK_UNKNOWN) return KILN_PUBCHECK_RETRY;
    if (look == KILN_PUBCHECK_THERE) return KILN_PUBCHECK_SETTLED;
    return txcheck_lost(e);
}

kiln_status cons_txcheck_init(void)
{
    txcheck_m_again = kiln_metric_counter(
        "kiln_consumer_transitions_republished_total",
        "transitions published again because nats-server lost them after confirming them");
    return kiln_pubcheck_create("kiln-txcheck", TXCHECK_KEEP_MS, TXCHECK_CAP, txcheck_check, NULL,
                                &txcheck_pc);
}

kiln_status cons_txcheck_start(void)
{
    return kiln_pubcheck_start(txcheck_pc);
}

void cons_txcheck_stop(int64_t finish_ms)
{
    kiln_pubcheck_stop(txcheck_pc, cons_g.nc, finish_ms);
}

void cons_txcheck_free(void)
{
    kiln_pubcheck_destroy(txcheck_pc);
    txcheck_pc = NULL;
}
