/* peers.c - kiln.consumer.running: is a redelivered job's call still running
 * in another consumer?
 *
 * nats-server redelivers a job when its in-progress acks stop coming for
 * AckWait. Usually its consumer died; but across a NATS outage longer than
 * AckWait a live consumer's acks cannot arrive either, and the copy may go
 * to another consumer, which would call the provider a second time (a
 * second paid generation) beside the running one. Before running such a
 * copy the fetcher asks every consumer here (core NATS, each subscribes).
 * The one whose call runs sends that job's in-progress ack at once and
 * answers; the asker then drops its copy unacked, as for a copy of a call
 * running in its own process (nats-server acks by stream sequence, so the
 * running call's ack settles it). The callback runs on a libnats thread. */
#include <stdlib.h>
#include <string.h>

#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

/* Sequences per question: a fetched batch's redeliveries, at most. */
#define PEERS_MAX_SEQS 1024

static natsSubscription *peers_sub;

static void peers_on_query(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    int len = natsMsg_GetDataLength(msg);
    Kiln__V1__RunningQuery *q = NULL;
    if (reply != NULL && reply[0] != '\0' && len >= 0 && len <= KILN_PB_MAX_BYTES)
        q = kiln__v1__running_query__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(msg));
    /* Our own question comes back to us too: the copy it asks about is ours. */
    if (q == NULL || q->n_stream_seqs == 0 || q->n_stream_seqs > PEERS_MAX_SEQS ||
        (q->asker != NULL && strcmp(q->asker, cons_status_id()) == 0))
        goto out;
    uint64_t *held = malloc(q->n_stream_seqs * sizeof *held);
    if (held == NULL) goto out;
    size_t n = cons_registry_running_seqs(q->stream_seqs, q->n_stream_seqs, held);
    if (n > 0) {
        Kiln__V1__RunningReply rep = KILN__V1__RUNNING_REPLY__INIT;
        rep.consumer = (char *)cons_status_id();
        rep.n_stream_seqs = n;
        rep.stream_seqs = held;
        uint8_t *buf = NULL;
        size_t blen = 0;
        if (kiln_pb_pack((const ProtobufCMessage *)&rep, &buf, &blen) == KILN_OK) {
            natsStatus s = natsConnection_Publish(nc, reply, buf, (int)blen);
            if (s != NATS_OK) LOG_WARN("running reply failed status=%s", natsStatus_GetText(s));
        }
        free(buf);
        LOG_INFO("told another consumer our calls still run asker=%s jobs=%zu",
                 q->asker != NULL ? q->asker : "?", n);
    }
    free(held);
out:
    if (q != NULL) kiln__v1__running_query__free_unpacked(q, NULL);
    natsMsg_Destroy(msg);
}

size_t cons_peers_ask(const uint64_t *seqs, size_t n, bool *held, char *runner, size_t runner_len)
{
    memset(held, 0, n * sizeof *held);
    if (runner_len > 0) runner[0] = '\0';
    if (n == 0 || n > PEERS_MAX_SEQS) return 0;
    Kiln__V1__RunningQuery q = KILN__V1__RUNNING_QUERY__INIT;
    q.asker = (char *)cons_status_id();
    q.n_stream_seqs = n;
    q.stream_seqs = (uint64_t *)seqs;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kiln_pb_pack((const ProtobufCMessage *)&q, &buf, &len) != KILN_OK) return 0;
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, cons_g.nc, KILN_SUBJ_CONSUMER_RUNNING, buf,
                                          (int)len, CONS_PEER_ASK_MS);
    free(buf);
    if (s != NATS_OK) return 0; /* a timeout: nobody runs them, or nobody could say */
    int rlen = natsMsg_GetDataLength(reply);
    Kiln__V1__RunningReply *rep = NULL;
    if (rlen >= 0 && rlen <= KILN_PB_MAX_BYTES)
        rep = kiln__v1__running_reply__unpack(NULL, (size_t)rlen,
                                              (const uint8_t *)natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    if (rep == NULL) return 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r < rep->n_stream_seqs; r++) {
            if (rep->stream_seqs[r] != seqs[i]) continue;
            held[i] = true;
            k++;
            break;
        }
    }
    if (runner_len > 0)
        snprintf(runner, runner_len, "%s", rep->consumer != NULL ? rep->consumer : "?");
    kiln__v1__running_reply__free_unpacked(rep, NULL);
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
