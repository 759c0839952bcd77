/* resubmit.c - after a reconnect to NATS, makes sure the jobs a process
 * submitted shortly before (the gateway's accepted submits, the client
 * library's) are still known, and publishes again each one nats-server
 * lost.
 *
 * nats-server 2.9.10 can lose messages it confirmed in the last moments
 * before it is killed (seen for jobs.done in chaos runs; store/donecheck.c).
 * For a submit that means a job its client was told is queued and that
 * nothing will ever run or know of. So the submitter shows every confirmed
 * submit to kiln_resubmit_keep, which keeps a copy of its JobRequest for the
 * process's last RESUBMIT_KEEP_MS of submitting (common/pubcheck.c), and
 * after a reconnect each is checked:
 * - KILN_JOBS still holds it at its sequence: nothing to do;
 * - it does not: with interest retention the message goes once every
 *   durable that wants it acked it, and the store acks only what it wrote.
 *   So a job the store knows (jobs.status) was consumed, and one it does not
 *   know was lost: it is published again, with its Nats-Msg-Id, to its lane;
 * - JetStream or the store does not answer: asked again 100 ms later, for up
 *   to 2 minutes. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "natsconn.h"
#include "pb.h"
#include "pubcheck.h"
#include "resubmit.h"
#include "subjects.h"

/* Of the latest submitting: the losses seen were of the last
 * ~40 ms; half a second of W4 is ~1.3 MB of JobRequests. */
#define RESUBMIT_KEEP_MS 500
#define RESUBMIT_CAP 16384
#define RESUBMIT_WAIT_MS 2000 /* one store question */

/* kiln_pubcheck_entry.kind: the lane, by its subject */
static const char *const resubmit_lanes[] = {KILN_SUBJ_GENERATE, KILN_SUBJ_GENERATE_HIGH,
                                             KILN_SUBJ_GENERATE_LOW};
#define RESUBMIT_NLANES ((int)(sizeof resubmit_lanes / sizeof resubmit_lanes[0]))

struct kiln_resubmit {
    kiln_pubcheck *pc;
    jsCtx *js;           /* set by kiln_resubmit_start */
    natsConnection *qnc;
    kiln_metric *m_checked, *m_again;
};

void kiln_resubmit_keep(kiln_resubmit *rs, natsMsg *msg, uint64_t seq)
{
    const char *subj = natsMsg_GetSubject(msg);
    int lane = 0;
    while (lane < RESUBMIT_NLANES && strcmp(subj, resubmit_lanes[lane]) != 0) lane++;
    if (lane == RESUBMIT_NLANES) return;
    int len = natsMsg_GetDataLength(msg);
    kiln_pubcheck_keep(rs->pc, natsMsg_GetData(msg), len > 0 ? (size_t)len : 0, lane, seq);
}

typedef enum { RESUBMIT_KNOWN, RESUBMIT_UNKNOWN, RESUBMIT_NO_ANSWER } resubmit_store_says;

/* Asks the store (jobs.status) whether it knows job id. */
static resubmit_store_says resubmit_ask_store(kiln_resubmit *rs, const char *id)
{
    natsMsg *reply = NULL;
    const char *err = NULL;
    natsStatus s = natsConnection_RequestString(&reply, rs->qnc, KILN_SUBJ_STATUS, id, RESUBMIT_WAIT_MS);
    if (s != NATS_OK) return RESUBMIT_NO_ANSWER;
    resubmit_store_says says = RESUBMIT_KNOWN;
    if (natsMsgHeader_Get(reply, KILN_HDR_ERROR, &err) == NATS_OK)
        says = strcmp(err, "not_found") == 0 ? RESUBMIT_UNKNOWN : RESUBMIT_NO_ANSWER;
    natsMsg_Destroy(reply);
    return says;
}

static kiln_pubcheck_result resubmit_publish(kiln_resubmit *rs, const kiln_pubcheck_entry *e,
                                             const char *id)
{
    natsMsg *m = NULL;
    uint64_t new_seq = 0;
    bool dup = false;
    kiln_status ks = kiln_nats_status(
        natsMsg_Create(&m, resubmit_lanes[e->kind], NULL, (const char *)e->data, (int)e->len));
    if (ks == KILN_OK) ks = kiln_pubcheck_publish(rs->js, m, id, id, &new_seq, &dup);
    natsMsg_Destroy(m);
    if (ks != KILN_OK) return KILN_PUBCHECK_RETRY;
    LOG_WARN("resubmit: submit lost by nats-server after it confirmed it, published again job=%s "
             "seq=%" PRIu64 " new_seq=%" PRIu64 " duplicate=%d",
             id, e->seq, new_seq, (int)dup);
    kiln_metric_add(rs->m_again, 1);
    return KILN_PUBCHECK_SETTLED;
}

static kiln_pubcheck_result resubmit_check(const kiln_pubcheck_entry *e, void *arg)
{
    kiln_resubmit *rs = arg;
    kiln_pubcheck_look look = kiln_pubcheck_look_up(rs->js, KILN_STREAM_JOBS, e);
    if (look == KILN_PUBCHECK_UNKNOWN) return KILN_PUBCHECK_RETRY;
    kiln_pubcheck_result r = KILN_PUBCHECK_SETTLED;
    if (look == KILN_PUBCHECK_LOST) {
        Kiln__V1__JobRequest *req = kiln__v1__job_request__unpack(NULL, e->len, e->data);
        if (req == NULL || req->id == NULL || req->id[0] == '\0') {
            LOG_WARN("resubmit: a kept submit does not decode, dropped seq=%" PRIu64, e->seq);
        } else {
            resubmit_store_says says = resubmit_ask_store(rs, req->id);
            if (says == RESUBMIT_NO_ANSWER) r = KILN_PUBCHECK_RETRY;
            else if (says == RESUBMIT_UNKNOWN) r = resubmit_publish(rs, e, req->id);
        }
        kiln__v1__job_request__free_unpacked(req, NULL);
    }
    if (r == KILN_PUBCHECK_SETTLED) kiln_metric_add(rs->m_checked, 1);
    return r;
}

kiln_status kiln_resubmit_create(const char *thread_name, kiln_metric *checked, kiln_metric *again,
                                 kiln_resubmit **out)
{
    *out = NULL;
    kiln_resubmit *rs = calloc(1, sizeof *rs);
    if (rs == NULL) return KILN_ENOMEM;
    if (kiln_pubcheck_create(thread_name, RESUBMIT_KEEP_MS, RESUBMIT_CAP, resubmit_check, rs,
                             &rs->pc) != KILN_OK) {
        free(rs);
        return KILN_ENOMEM;
    }
    rs->m_checked = checked;
    rs->m_again = again;
    *out = rs;
    return KILN_OK;
}

kiln_status kiln_resubmit_start(kiln_resubmit *rs, jsCtx *js, natsConnection *qnc)
{
    rs->js = js;
    rs->qnc = qnc;
    return kiln_pubcheck_start(rs->pc);
}

void kiln_resubmit_stop(kiln_resubmit *rs)
{
    if (rs != NULL) kiln_pubcheck_stop(rs->pc, rs->qnc, KILN_PUBCHECK_FINISH_MS);
}

void kiln_resubmit_destroy(kiln_resubmit *rs)
{
    if (rs == NULL) return;
    kiln_pubcheck_destroy(rs->pc);
    free(rs);
}
