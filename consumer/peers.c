/* peers.c - kiln.consumer.running: is a redelivered job's call still running
 * in another consumer?
 *
 * nats-server redelivers a job when its in-progress acks stop coming for
 * AckWait. Usually its consumer died; but across a NATS outage longer than
 * AckWait a live consumer's acks cannot arrive either, and the copy may go
 * to another consumer, which would call the provider a second time (a
 * second paid generation) beside the running one. Before running such a
 * copy the fetcher asks every consumer here (core NATS, each subscribes).
 * Each one that holds a copy of an asked stream sequence (fetched, held
 * back for another consumer, or running) sends that job's in-progress ack at
 * once and answers with the sequences it holds; the asker gathers the
 * answers until every sequence is accounted for or the wait ends, and drops
 * the copies held elsewhere unacked, as for a copy of a call running in its
 * own process (nats-server acks by stream sequence, so the holder's ack
 * settles it). Copies not yet started count too: two live copies of one
 * message can exist (nats-server 2.9 delivers one again with its count
 * reset, or a nak comes through the other copy), and a fetched or held-back
 * copy nobody answered for would start beside the other. The callback runs
 * on a libnats thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

/* Sequences per question or answer: one fetched batch's, at most. */
#define PEERS_MAX_SEQS CONS_FETCH_MAX

static natsSubscription *peers_sub;

/* Answers a RunningQuery with the asked sequences this process holds. */
static void peers_answer(natsConnection *nc, const char *reply, const Kiln__V1__RunningQuery *q)
{
    uint64_t held[PEERS_MAX_SEQS];
    size_t n = cons_registry_held_seqs(q->stream_seqs, q->n_stream_seqs, held);
    if (n == 0) return;
    Kiln__V1__RunningReply rep = KILN__V1__RUNNING_REPLY__INIT;
    rep.consumer = (char *)cons_status_id();
    rep.n_stream_seqs = n;
    rep.stream_seqs = held;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kiln_pb_pack((const ProtobufCMessage *)&rep, &buf, &len) == KILN_OK) {
        natsStatus s = natsConnection_Publish(nc, reply, buf, (int)len);
        if (s != NATS_OK) LOG_WARN("running reply failed status=%s", natsStatus_GetText(s));
    }
    free(buf);
    LOG_INFO("told another consumer we hold the jobs it asked about asker=%s jobs=%zu",
             q->asker != NULL ? q->asker : "?", n);
}

static void peers_on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    int len = natsMsg_GetDataLength(msg);
    Kiln__V1__RunningQuery *q = NULL;
    if (reply != NULL && reply[0] != '\0' && len >= 0 && len <= KILN_PB_MAX_BYTES)
        q = kiln__v1__running_query__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(msg));
    /* Our own question comes back to us too: the copies it asks about are ours. */
    if (q != NULL && q->n_stream_seqs > 0 && q->n_stream_seqs <= PEERS_MAX_SEQS &&
        !(q->asker != NULL && strcmp(q->asker, cons_status_id()) == 0))
        peers_answer(nc, reply, q);
    if (q != NULL) kiln__v1__running_query__free_unpacked(q, NULL);
    natsMsg_Destroy(msg);
}

/* Marks in held the asked sequences one answer names; returns how many it
 * newly marked. */
static size_t peers_take_answer(natsMsg *m, const uint64_t *seqs, size_t n, bool *held)
{
    int len = natsMsg_GetDataLength(m);
    Kiln__V1__RunningReply *rep = NULL;
    if (len >= 0 && len <= KILN_PB_MAX_BYTES)
        rep = kiln__v1__running_reply__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m));
    if (rep == NULL) return 0;
    size_t k = 0;
    if (rep->n_stream_seqs <= PEERS_MAX_SEQS) {
        for (size_t r = 0; r < rep->n_stream_seqs; r++) {
            for (size_t i = 0; i < n; i++) {
                if (held[i] || rep->stream_seqs[r] != seqs[i]) continue;
                held[i] = true;
                k++;
            }
        }
    }
    if (k > 0)
        LOG_INFO("another consumer holds redelivered jobs holder=%s jobs=%zu",
                 rep->consumer != NULL ? rep->consumer : "?", k);
    kiln__v1__running_reply__free_unpacked(rep, NULL);
    return k;
}

size_t cons_peers_ask(const uint64_t *seqs, size_t n, int64_t wait_ms, bool *held)
{
    memset(held, 0, n * sizeof *held);
    if (n == 0 || n > PEERS_MAX_SEQS) return 0;
    Kiln__V1__RunningQuery q = KILN__V1__RUNNING_QUERY__INIT;
    q.asker = (char *)cons_status_id();
    q.n_stream_seqs = n;
    q.stream_seqs = (uint64_t *)seqs;
    uint8_t *buf = NULL;
    size_t len = 0;
    natsInbox *inbox = NULL;
    natsSubscription *answers = NULL;
    size_t k = 0;
    if (kiln_pb_pack((const ProtobufCMessage *)&q, &buf, &len) != KILN_OK) return 0;
    /* Several consumers may each run some of the copies: every answer
     * counts, not just the first (natsConnection_Request's). */
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&answers, cons_g.nc, inbox);
    if (s == NATS_OK)
        s = natsConnection_PublishRequest(cons_g.nc, KILN_SUBJ_CONSUMER_RUNNING, inbox, buf, (int)len);
    int64_t until = kiln_mono_ms() + wait_ms;
    while (s == NATS_OK && k < n) {
        int64_t left = until - kiln_mono_ms();
        natsMsg *m = NULL;
        if (left <= 0 || natsSubscription_NextMsg(&m, answers, left) != NATS_OK) break;
        k += peers_take_answer(m, seqs, n, held);
        natsMsg_Destroy(m);
    }
    if (s != NATS_OK) LOG_DEBUG("running query not sent status=%s", natsStatus_GetText(s));
    kiln_nats_unsubscribe(&answers);
    natsInbox_Destroy(inbox);
    free(buf);
    return k;
}

kiln_status cons_peers_start(void)
{
    natsStatus s = natsConnection_Subscribe(&peers_sub, cons_g.nc, KILN_SUBJ_CONSUMER_RUNNING,
                                            peers_on_query, NULL);
    if (s != NATS_OK) {
        LOG_ERROR("running subscribe failed status=%s", natsStatus_GetText(s));
        peers_sub = NULL;
        return kiln_nats_status(s);
    }
    return KILN_OK;
}

void cons_peers_stop(void)
{
    kiln_nats_unsubscribe(&peers_sub);
}
