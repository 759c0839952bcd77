/* deadletter.c - copies a job message that cannot be processed to jobs.dead
 * (stream KILN_DEAD) with its reason; the job's chain continues (and the
 * original is acked or Term'd) only after JetStream acked the copy. */
#include <stdio.h>
#include <string.h>

#include "cons.h"
#include "jobreq.h"
#include "log.h"
#include "natsconn.h"
#include "subjects.h"

/* Header values must be one line of printable text. */
static void dead_sanitize(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; in[i] != '\0' && o + 1 < outlen; i++) {
        unsigned char c = (unsigned char)in[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[o] = '\0';
}

kiln_status cons_deadletter_publish(cons_job *j)
{
    kiln_status ks = KILN_OK;
    natsStatus s = NATS_OK;
    natsMsg *m = NULL;
    char reason[CONS_REASON_MAX];
    char msg_id[64];
    const char *job_id = j->id;
    const char *hdr_id = NULL;

    /* An undecodable payload may still name its job in the publisher's Nats-Msg-Id. */
    if (job_id[0] == '\0' && natsMsgHeader_Get(j->msg, KILN_HDR_MSG_ID, &hdr_id) == NATS_OK &&
        hdr_id != NULL && kiln_jobreq_id_ok(hdr_id))
        job_id = hdr_id;
    dead_sanitize(j->dead_reason, reason, sizeof reason);
    snprintf(msg_id, sizeof msg_id, "dead.%llu.%llu", (unsigned long long)j->stream_seq,
             (unsigned long long)j->attempt);

    s = natsMsg_Create(&m, KILN_SUBJ_DEAD, NULL, natsMsg_GetData(j->msg),
                       natsMsg_GetDataLength(j->msg));
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_REASON, reason);
    if (s == NATS_OK && job_id[0] != '\0') s = natsMsgHeader_Set(m, KILN_HDR_JOB_ID, job_id);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_LANE, j->lane); /* a retry goes back to it */
    if (s != NATS_OK) {
        ks = kiln_nats_status(s);
        goto out;
    }
    /* Accepted, the ack handler (or the overdue sweep) owns j: what the log
     * line names is copied first. */
    char id_copy[KILN_ID_MAX_LEN + 1];
    const char *lane = j->lane; /* a static lane name */
    unsigned long long seq = (unsigned long long)j->stream_seq;
    snprintf(id_copy, sizeof id_copy, "%s", job_id[0] ? job_id : "-");
    ks = cons_publish_async(&j, 1, &m, msg_id);
    if (ks != KILN_OK)
        LOG_WARN("dead letter publish failed job=%s seq=%llu status=%s", id_copy, seq, kiln_status_str(ks));
    else /* after the publish: the tests take this line as "it went out" */
        LOG_INFO("dead letter job=%s lane=%s seq=%llu reason=\"%s\"", id_copy, lane, seq, reason);

out:
    natsMsg_Destroy(m);
    return ks;
}
