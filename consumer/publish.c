/* publish.c - JobTransitions on kiln.tx (JetStream async publish with
 * Nats-Msg-Id "<id>.<attempt>.<state>") and the async publish ack handler,
 * which continues a job's result chain. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

#define PUB_MAX_WAIT_MS 10000   /* JetStream ack wait for one publish */
#define PUB_SWEEP_MS 20000      /* after this the transfer thread gives the job up */
#define PUB_SHORT_FIELD 128     /* invalid requests: longer strings are cut */

/* Number of bytes of s holding at most max_chars UTF-8 code points. */
static size_t pub_utf8_prefix(const char *s, size_t max_chars)
{
    size_t i = 0, chars = 0;
    for (; s[i] != '\0'; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (chars == max_chars) break;
            chars++;
        }
    }
    return i;
}

static char *pub_cut(const char *s, size_t max_chars)
{
    if (s == NULL) return NULL;
    return strndup(s, pub_utf8_prefix(s, max_chars));
}

/* A bounded copy of an invalid request for its FAILED transition: the
 * identifying fields, the prompt cut to the contract's limit, no params. */
static kiln_status pub_short_request(const Kiln__V1__JobRequest *r, Kiln__V1__JobRequest *out)
{
    kiln__v1__job_request__init(out);
    out->id = (char *)r->id;
    out->user_id = (char *)r->user_id;
    out->priority = r->priority;
    out->created_at_ms = r->created_at_ms;
    out->not_before_ms = r->not_before_ms;
    out->n = r->n;
    out->timeout_s = r->timeout_s;
    out->max_attempts = r->max_attempts;
    out->prompt = pub_cut(r->prompt != NULL ? r->prompt : "", KILN_PROMPT_MAX_CHARS);
    out->model = pub_cut(r->model != NULL ? r->model : "", PUB_SHORT_FIELD);
    out->size = pub_cut(r->size != NULL ? r->size : "", PUB_SHORT_FIELD);
    if (out->prompt == NULL || out->model == NULL || out->size == NULL) return KILN_ENOMEM;
    return KILN_OK;
}

static void pub_short_request_free(Kiln__V1__JobRequest *r)
{
    free(r->prompt);
    free(r->model);
    free(r->size);
}

kiln_status cons_publish_transition(cons_job *j, Kiln__V1__JobState st, bool track)
{
    kiln_status ks = KILN_OK;
    natsStatus s = NATS_OK;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    Kiln__V1__JobRequest short_req;
    Kiln__V1__Image imgs[CONS_MAX_IMAGES];
    Kiln__V1__Image *img_ptrs[CONS_MAX_IMAGES];
    Kiln__V1__ImageBlob blobs[CONS_MAX_IMAGES];
    Kiln__V1__ImageBlob *blob_ptrs[CONS_MAX_IMAGES];
    bool have_short = false;
    uint8_t *buf = NULL;
    size_t len = 0;
    natsMsg *m = NULL;
    char msg_id[KILN_ID_MAX_LEN + 40];
    jsPubOptions po;

    t.request = j->req;
    if (j->truncate_prompt && j->req != NULL) {
        have_short = true;
        ks = pub_short_request(j->req, &short_req);
        if (ks != KILN_OK) goto out;
        t.request = &short_req;
    }
    t.state = st;
    t.attempt = j->attempt;
    t.at_ms = kiln_now_ms();
    t.started_at_ms = j->started_at_ms; /* 0 when the attempt never started */
    if (st == KILN__V1__JOB_STATE__JOB_STATE_COMPLETED) {
        for (size_t i = 0; i < j->n_images; i++) {
            kiln__v1__image__init(&imgs[i]);
            imgs[i].index = (uint32_t)i;
            imgs[i].url = j->images[i].url;
            imgs[i].content_type = j->images[i].size_bytes > 0 ? "image/png" : "";
            imgs[i].size_bytes = j->images[i].size_bytes;
            img_ptrs[i] = &imgs[i];
            if (j->images[i].pack[0] != '\0') {
                kiln__v1__image_blob__init(&blobs[t.n_blobs]);
                blobs[t.n_blobs].index = (uint32_t)i;
                blobs[t.n_blobs].pack = j->images[i].pack;
                blobs[t.n_blobs].offset = j->images[i].offset;
                blobs[t.n_blobs].size = j->images[i].size_bytes;
                blob_ptrs[t.n_blobs] = &blobs[t.n_blobs];
                t.n_blobs++;
            }
        }
        t.n_images = j->n_images;
        t.images = img_ptrs;
        t.blobs = blob_ptrs;
    }
    if (j->err_code[0] != '\0' && (st == KILN__V1__JOB_STATE__JOB_STATE_FAILED ||
                                   st == KILN__V1__JOB_STATE__JOB_STATE_PENDING)) {
        err.code = j->err_code;
        err.message = j->err_msg;
        t.error = &err;
    }
    if (st == KILN__V1__JOB_STATE__JOB_STATE_PENDING) t.retry_at_ms = j->retry_at_ms;

    ks = kiln_pb_pack((const ProtobufCMessage *)&t, &buf, &len);
    if (ks != KILN_OK) goto out;
    snprintf(msg_id, sizeof msg_id, "%s.%u.%s", j->id, j->attempt, kiln_state_name(st));
    s = natsMsg_Create(&m, KILN_SUBJ_TRANSITION, NULL, (const char *)buf, (int)len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_JOB_ID, j->id);
    if (s == NATS_OK) s = jsPubOptions_Init(&po);
    if (s != NATS_OK) {
        ks = kiln_nats_status(s);
        goto out;
    }
    po.MsgId = msg_id;
    po.MaxWait = PUB_MAX_WAIT_MS;
    LOG_DEBUG("transition publish job=%s attempt=%u state=%s", j->id, j->attempt,
              kiln_state_name(st));
    if (track) cons_registry_track_pub(j, m, kiln_mono_ms() + PUB_SWEEP_MS);
    s = js_PublishMsgAsync(cons_g.js, &m, &po);
    /* From here on, when tracked and accepted, j may already be finished by the ack handler. */
    if (s != NATS_OK) {
        if (track) cons_registry_untrack_pub(j);
        LOG_WARN("transition publish failed job=%s state=%s status=%s", j->id,
                 kiln_state_name(st), natsStatus_GetText(s));
        ks = KILN_ENATS;
        goto out;
    }

out:
    natsMsg_Destroy(m);
    free(buf);
    if (have_short) pub_short_request_free(&short_req);
    return ks;
}

/* Runs on a libnats thread, once per async publish of this process. */
void cons_publish_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
                              void *closure)
{
    (void)js;
    (void)closure;
    char err[256] = "";
    bool ok = pa != NULL && pae == NULL;
    /* Look the job up before the message is freed: its address is the key. */
    cons_job *j = cons_registry_take_pub(msg);
    if (!ok) {
        snprintf(err, sizeof err, "%s",
                 pae != NULL && pae->ErrText != NULL ? pae->ErrText : "publish failed");
        LOG_WARN("publish not acknowledged subject=%s tracked=%d error=\"%s\"",
                 natsMsg_GetSubject(msg) != NULL ? natsMsg_GetSubject(msg) : "-", j != NULL, err);
    }
    natsMsg_Destroy(msg);
    if (j != NULL) cons_job_published(j, ok, err);
}
