/* cancel.c - publishes the store's CANCELLED transition on kiln.tx. */
#include <stdio.h>
#include <stdlib.h>

#include "cancel.h"
#include "clock.h"
#include "jobreq.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

kiln_status cancel_publish(jsCtx *js, const Kiln__V1__JobRecord *rec, uint64_t *seq)
{
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    char msgid[KILN_ID_MAX_LEN + 16];
    const char *id = rec->request->id;

    err.code = "cancelled";
    err.message = "cancelled by request";
    t.request = rec->request;
    t.state = KILN__V1__JOB_STATE__JOB_STATE_CANCELLED;
    t.attempt = rec->status->attempts;
    t.at_ms = kiln_now_ms();
    t.error = &err;
    kiln_status st = kiln_pb_pack(&t.base, &buf, &len);
    if (st != KILN_OK) return st;

    /* One cancel per job: a second request inside the duplicate window
     * gets the first one's sequence back and waits for the same apply. */
    snprintf(msgid, sizeof msgid, "%s.cancel", id);
    natsStatus s = natsMsg_Create(&m, KILN_SUBJ_TRANSITION, NULL, (const char *)buf, (int)len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_MSG_ID, msgid);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_JOB_ID, id);
    if (s == NATS_OK) s = js_PublishMsg(&pa, js, m, NULL, &jerr);
    if (s != NATS_OK) {
        LOG_WARN("cancel publish failed job=%s status=%s jerr=%d", id, natsStatus_GetText(s),
                 (int)jerr);
        st = kiln_nats_status(s);
        goto out;
    }
    *seq = pa->Sequence;
    LOG_DEBUG("cancel published job=%s seq=%llu duplicate=%d", id, (unsigned long long)pa->Sequence,
              (int)pa->Duplicate);
out:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    free(buf);
    return st;
}
