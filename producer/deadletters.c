/* deadletters.c - the client library's view of jobs.dead (stream KILN_DEAD):
 * list the letters, submit a dead job again, drop a letter.
 *
 * Letters are read one by one by sequence (js_GetMsg): a stream of dead
 * jobs is small and read by a person, and this needs no consumer on the
 * server. Sequences a drop removed are skipped. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "clock.h"
#include "jobreq.h"
#include "kiln_client.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"
#include "uuid7.h"

#define DEAD_LIST_MAX 1000
#define DEAD_HDR_RETRY_OF "Kiln-Retry-Of"

static int dead_missing(natsStatus ns, jsErrCode jerr)
{
    return jerr == JSNoMessageFoundErr || jerr == JSSequenceNotFoundErr ||
           (ns == NATS_NOT_FOUND && jerr == 0);
}

static char *dead_header(natsMsg *m, const char *name)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL) v = "";
    return strdup(v);
}

/* Fills l from m (a KILN_DEAD message). */
static kiln_status dead_fill(kiln_dead_letter *l, natsMsg *m, uint64_t seq)
{
    memset(l, 0, sizeof *l);
    l->seq = seq;
    l->at_ms = natsMsg_GetTime(m) / 1000000;
    l->job_id = dead_header(m, KILN_HDR_JOB_ID);
    l->reason = dead_header(m, KILN_HDR_REASON);
    l->lane = dead_header(m, KILN_HDR_LANE);
    int len = natsMsg_GetDataLength(m);
    l->len = len > 0 ? (size_t)len : 0;
    l->data = malloc(l->len + 1);
    if (l->job_id == NULL || l->reason == NULL || l->lane == NULL || l->data == NULL) return KILN_ENOMEM;
    if (l->len > 0) memcpy(l->data, natsMsg_GetData(m), l->len);
    return KILN_OK;
}

void kiln_dead_letters_free(kiln_dead_letter *letters, size_t n)
{
    if (letters == NULL) return;
    for (size_t i = 0; i < n; i++) {
        free(letters[i].job_id);
        free(letters[i].reason);
        free(letters[i].lane);
        free(letters[i].data);
    }
    free(letters);
}

kiln_status kiln_client_dead_list(kiln_client *c, uint64_t from_seq, size_t max,
                                  kiln_dead_letter **out, size_t *n, uint64_t *next_seq)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    *out = NULL;
    *n = 0;
    *next_seq = 0;
    if (c == NULL || max == 0 || max > DEAD_LIST_MAX) return KILN_EINVAL;
    natsStatus ns = js_GetStreamInfo(&si, c->js, KILN_STREAM_DEAD, NULL, &jerr);
    if (ns != NATS_OK) return kiln_nats_status(ns);
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
    bool empty = si->State.Msgs == 0;
    jsStreamInfo_Destroy(si);
    if (empty) return KILN_OK;
    kiln_dead_letter *letters = calloc(max, sizeof *letters);
    if (letters == NULL) return KILN_ENOMEM;
    kiln_status st = KILN_OK;
    uint64_t seq = from_seq > first ? from_seq : first;
    size_t got = 0;
    for (; seq <= last && got < max && st == KILN_OK; seq++) {
        natsMsg *m = NULL;
        jerr = 0;
        ns = js_GetMsg(&m, c->js, KILN_STREAM_DEAD, seq, NULL, &jerr);
        if (ns != NATS_OK) {
            if (!dead_missing(ns, jerr)) st = kiln_nats_status(ns);
            continue; /* dropped or aged out */
        }
        st = dead_fill(&letters[got], m, seq);
        got++; /* counted even when dead_fill failed, so it is freed */
        natsMsg_Destroy(m);
    }
    if (st != KILN_OK) {
        kiln_dead_letters_free(letters, got);
        return st;
    }
    *out = letters;
    *n = got;
    *next_seq = seq <= last ? seq : 0;
    return KILN_OK;
}

kiln_status kiln_client_retry_encode(const void *data, size_t len, char *id_out,
                                     size_t id_out_len, char *err, size_t errlen, uint8_t **buf,
                                     size_t *blen, Kiln__V1__Priority *priority)
{
    char id[KILN_ID_MAX_LEN + 1], field[64] = "", msg[256] = "";
    Kiln__V1__JobRequest *req = NULL;
    if (len > KILN_PB_MAX_BYTES ||
        (req = kiln__v1__job_request__unpack(NULL, len, data)) == NULL) {
        client_seterr(err, errlen, "the letter is not a job request (%zu bytes that do not decode)",
                      len);
        return KILN_EINVAL;
    }
    kiln_pb_drop_unknown(&req->base); /* packed again below */
    kiln_status st = kiln_uuid7(id);
    if (st != KILN_OK) {
        client_seterr(err, errlen, "could not make a job id (no randomness)");
        goto out;
    }
    if (strlen(id) + 1 > id_out_len) {
        client_seterr(err, errlen, "id_out is too small for the job id");
        st = KILN_EINVAL;
        goto out;
    }
    /* Point into stack memory only for the pack; the unpacked request
     * owns (and frees) its own strings. */
    char *old_id = req->id, *old_key = req->idempotency_key;
    req->id = id;
    req->idempotency_key = "";
    req->created_at_ms = kiln_now_ms();
    req->not_before_ms = 0;
    st = kiln_jobreq_validate(req, field, sizeof field, msg, sizeof msg);
    if (st != KILN_OK)
        client_seterr(err, errlen, "the dead job is invalid (%s: %s): submit a corrected one",
                      field[0] ? field : "request", msg[0] ? msg : "invalid");
    else
        st = kiln_pb_pack(&req->base, buf, blen);
    req->id = old_id;
    req->idempotency_key = old_key;
    if (st == KILN_OK) {
        *priority = req->priority;
        memcpy(id_out, id, strlen(id) + 1);
    }
out:
    kiln__v1__job_request__free_unpacked(req, NULL);
    return st;
}

kiln_status kiln_client_dead_drop(kiln_client *c, uint64_t seq)
{
    jsErrCode jerr = 0;
    if (c == NULL || seq == 0) return KILN_EINVAL;
    natsStatus ns = js_DeleteMsg(c->js, KILN_STREAM_DEAD, seq, NULL, &jerr);
    if (ns == NATS_OK) return KILN_OK;
    if (dead_missing(ns, jerr)) return KILN_ENOTFOUND;
    if (jerr == JSStreamMsgDeleteFailed) {
        /* nats-server 2.9 answers a missing sequence with this generic
         * code ("no message found"): look before calling it an error. */
        natsMsg *m = NULL;
        jsErrCode gerr = 0;
        natsStatus gs = js_GetMsg(&m, c->js, KILN_STREAM_DEAD, seq, NULL, &gerr);
        natsMsg_Destroy(m);
        if (gs != NATS_OK && dead_missing(gs, gerr)) return KILN_ENOTFOUND;
    }
    return kiln_nats_status(ns);
}

kiln_status kiln_client_dead_retry(kiln_client *c, uint64_t seq, char *id_out, size_t id_out_len,
                                   char *err, size_t errlen)
{
    natsMsg *dead = NULL, *m = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    char id[KILN_ID_MAX_LEN + 1];
    Kiln__V1__Priority prio = KILN__V1__PRIORITY__PRIORITY_NORMAL;
    if (c == NULL || seq == 0 || id_out == NULL) return KILN_EINVAL;

    natsStatus ns = js_GetMsg(&dead, c->js, KILN_STREAM_DEAD, seq, NULL, &jerr);
    if (ns != NATS_OK) {
        if (dead_missing(ns, jerr)) {
            client_seterr(err, errlen, "no dead letter %llu", (unsigned long long)seq);
            return KILN_ENOTFOUND;
        }
        client_seterr(err, errlen, "cannot read dead letter %llu: %s", (unsigned long long)seq,
                      client_nats_text(ns));
        return kiln_nats_status(ns);
    }
    kiln_status st = kiln_client_retry_encode(natsMsg_GetData(dead),
                                              (size_t)natsMsg_GetDataLength(dead), id, sizeof id,
                                              err, errlen, &buf, &len, &prio);
    if (st != KILN_OK) goto out;
    /* The lane the job came on, which its payload's field need not name. */
    const char *lane = NULL;
    if (natsMsgHeader_Get(dead, KILN_HDR_LANE, &lane) == NATS_OK) (void)kiln_priority_parse(lane, &prio);
    if (strlen(id) + 1 > id_out_len) {
        client_seterr(err, errlen, "id_out is too small for the job id");
        st = KILN_EINVAL;
        goto out;
    }
    const char *subject = kiln_priority_subject(prio);
    const char *old_id = NULL;
    ns = natsMsg_Create(&m, subject, NULL, (const char *)buf, (int)len);
    if (ns == NATS_OK && natsMsgHeader_Get(dead, KILN_HDR_JOB_ID, &old_id) == NATS_OK &&
        old_id != NULL && old_id[0] != '\0')
        ns = natsMsgHeader_Set(m, DEAD_HDR_RETRY_OF, old_id);
    jsPubOptions po;
    if (ns == NATS_OK) ns = jsPubOptions_Init(&po);
    if (ns == NATS_OK) {
        po.MsgId = id;
        po.MaxWait = KILN_CLIENT_REQUEST_TIMEOUT_MS;
        ns = js_PublishMsg(&pa, c->js, m, &po, &jerr);
    }
    if (ns != NATS_OK) {
        client_seterr(err, errlen, "publish to %s failed: %s", subject, client_nats_text(ns));
        st = kiln_nats_status(ns);
        goto out;
    }
    memcpy(id_out, id, strlen(id) + 1);
    /* The job is durable again: success, whatever the removal does. A
     * letter left behind is only reported (in err), so that a caller does
     * not retry it and run the job twice. */
    if (kiln_client_dead_drop(c, seq) == KILN_OK) {
        if (err != NULL && errlen > 0) err[0] = '\0';
    } else {
        client_seterr(err, errlen, "job %s submitted, but dead letter %llu was not removed", id,
                      (unsigned long long)seq);
    }
out:
    free(buf);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    natsMsg_Destroy(dead);
    return st;
}
