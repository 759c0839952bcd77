/* publish.c - JobTransitions on kiln.tx (JetStream async publish with
 * Nats-Msg-Id "<id>.<attempt>.<state>"), or several of one transfer round
 * in one TransitionBatch, and the async publish ack handler, which continues
 * each job's result chain. Dead letters go out through cons_publish_async too.
 *
 * A publish whose ack does not come within PUB_MAX_WAIT_MS gives its jobs
 * up through the registry's deadline (the transfer thread's overdue sweep),
 * not through nats.c's per-publish MaxWait: nats.c 3.4.1 follows every such
 * publish with its own bookkeeping and, MaxWait later, a timeout message,
 * acked or not (~17 % of the consumer's CPU in W2; design.md, Performance
 * notes). What nats.c then keeps for an ack that never comes is taken back
 * by cons_publish_drop_stale. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cons.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"
#include "subjects.h"

#define PUB_MAX_WAIT_MS 10000   /* JetStream ack wait for one publish: then its jobs are given up */
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

/* Packs j's transition to st into *buf (malloc'ed, the caller frees). */
static kiln_status pub_pack_transition(const cons_job *j, Kiln__V1__JobState st, uint8_t **buf,
                                       size_t *len)
{
    kiln_status ks = KILN_OK;
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    Kiln__V1__JobRequest short_req;
    Kiln__V1__Image imgs[CONS_MAX_IMAGES];
    Kiln__V1__Image *img_ptrs[CONS_MAX_IMAGES];
    Kiln__V1__ImageBlob blobs[CONS_MAX_IMAGES];
    Kiln__V1__ImageBlob *blob_ptrs[CONS_MAX_IMAGES];
    bool have_short = false;

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
                blobs[t.n_blobs].pack = (char *)j->images[i].pack;
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
        err.code = (char *)j->err_code;
        err.message = (char *)j->err_msg;
        t.error = &err;
    }
    if (st == KILN__V1__JOB_STATE__JOB_STATE_PENDING) t.retry_at_ms = j->retry_at_ms;
    ks = kiln_pb_pack((const ProtobufCMessage *)&t, buf, len);
out:
    if (have_short) pub_short_request_free(&short_req);
    return ks;
}

/* Whether an async publish went out on cons_g.js: nats.c's pending list
 * exists only after the first (before, asking for it crashes). */
static atomic_bool pub_used;

/* Held shared around every async publish on cons_g.js, exclusively while
 * stale publishes are taken back: nats.c lists a publish as pending before
 * it has written it out, and one taken back (and freed) in between would be
 * written from freed memory. */
static pthread_rwlock_t pub_sending = PTHREAD_RWLOCK_INITIALIZER;

/* Under the registry's lock, with no job waiting for an ack: what nats.c
 * still counts as unacked is a publish whose jobs were given up, or an
 * untracked one (PROCESSING); its ack changes nothing any more. */
static int pub_take_stale(void *arg)
{
    (void)arg;
    return atomic_load(&pub_used) ? kiln_nats_drop_unacked(cons_g.js) : 0;
}

void cons_publish_drop_stale(void)
{
    if (cons_g.js == NULL) return;
    pthread_rwlock_wrlock(&pub_sending);
    int n = cons_registry_with_no_pub_waiting(pub_take_stale, NULL);
    pthread_rwlock_unlock(&pub_sending);
    if (n > 0) LOG_WARN("publishes never acknowledged dropped msgs=%d", n);
}

kiln_status cons_publish_async(cons_job *const *jobs, size_t n, natsMsg **m, const char *msg_id)
{
    jsPubOptions po;
    natsStatus s = jsPubOptions_Init(&po);
    if (s != NATS_OK) return kiln_nats_status(s);
    po.MsgId = msg_id; /* no MaxWait: the registry's deadline gives the jobs up */
    if (n > 0) cons_registry_track_pub(jobs, n, *m, kiln_mono_ms() + PUB_MAX_WAIT_MS);
    pthread_rwlock_rdlock(&pub_sending);
    s = js_PublishMsgAsync(cons_g.js, m, &po);
    pthread_rwlock_unlock(&pub_sending);
    if (s != NATS_OK) {
        if (n > 0) cons_registry_untrack_pub(jobs, n);
        return KILN_ENATS;
    }
    atomic_store(&pub_used, true);
    return KILN_OK;
}

/* Publishes buf on kiln.tx with one header and, if msg_id is set, a
 * Nats-Msg-Id. The n jobs (none when not tracked) wait for its ack: the ack
 * handler continues them, so they may be gone once this returns KILN_OK. */
static kiln_status pub_send(cons_job *const *jobs, size_t n, const uint8_t *buf, size_t len,
                            const char *hdr, const char *hdr_value, const char *msg_id)
{
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, KILN_SUBJ_TRANSITION, NULL, (const char *)buf, (int)len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, hdr, hdr_value);
    kiln_status ks = s == NATS_OK ? cons_publish_async(jobs, n, &m, msg_id) : kiln_nats_status(s);
    natsMsg_Destroy(m); /* NULL once nats.c took it */
    return ks;
}

/* Publishes one packed transition of j, with its message id. */
static kiln_status pub_send_one(cons_job *j, Kiln__V1__JobState st, const uint8_t *buf,
                                size_t len, bool track)
{
    char msg_id[KILN_ID_MAX_LEN + 40];
    snprintf(msg_id, sizeof msg_id, "%s.%u.%s", j->id, j->attempt, kiln_state_name(st));
    LOG_DEBUG("transition publish job=%s attempt=%u state=%s", j->id, j->attempt,
              kiln_state_name(st));
    kiln_status ks = pub_send(&j, track ? 1 : 0, buf, len, KILN_HDR_JOB_ID, j->id, msg_id);
    if (ks != KILN_OK)
        LOG_WARN("transition publish failed job=%s state=%s status=%s", j->id,
                 kiln_state_name(st), kiln_status_str(ks));
    return ks;
}

/* ---- batches ------------------------------------------------------------------ */

/* The tracked transitions one transfer thread produces in one round (a
 * curl_multi_info_read pass: with many calls ending together, many jobs)
 * go out as one TransitionBatch: one stored message, one delivery to the
 * store and one ack instead of one each. Thread-local, so only the round's
 * own thread adds to it; the ack handler's thread publishes directly. */
#define PUB_BATCH_MAX 128
#define PUB_BATCH_BYTES (256 * 1024) /* well below NATS' default 1 MiB max_payload */

typedef struct {
    bool on;
    size_t n, bytes;
    cons_job *jobs[PUB_BATCH_MAX];
    Kiln__V1__JobState states[PUB_BATCH_MAX];
    ProtobufCBinaryData tx[PUB_BATCH_MAX]; /* packed JobTransitions, owned */
} pub_batch;

static _Thread_local pub_batch pub_round;

void cons_publish_batch_begin(void)
{
    pub_round.on = true;
    cons_image_stage_begin();
}

/* Whether j's transition names an image in a pack. */
static bool pub_names_pack(const cons_job *j, Kiln__V1__JobState st)
{
    if (st != KILN__V1__JOB_STATE__JOB_STATE_COMPLETED) return false;
    for (size_t i = 0; i < j->n_images; i++)
        if (j->images[i].pack[0] != '\0') return true;
    return false;
}

/* Writes the images this thread staged; when some were lost, the jobs of b
 * that name a pack image are abandoned (redelivered after AckWait, as on a
 * failed publish) and taken out of b. Returns how many jobs are left. */
static size_t pub_batch_write_images(pub_batch *b, size_t n)
{
    if (cons_image_flush() == KILN_OK) return n;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (pub_names_pack(b->jobs[i], b->states[i])) {
            cons_job_abandon(b->jobs[i], "image not saved");
            free(b->tx[i].data);
            continue;
        }
        b->jobs[kept] = b->jobs[i];
        b->states[kept] = b->states[i];
        b->tx[kept] = b->tx[i];
        kept++;
    }
    return kept;
}

/* Publishes the collected transitions, after the images they name are
 * written; a job whose publish failed is abandoned (redelivered after
 * AckWait), as a single publish's would be. */
static void pub_batch_flush(pub_batch *b)
{
    size_t n = pub_batch_write_images(b, b->n);
    b->n = 0;
    b->bytes = 0;
    if (n == 0) return;
    if (n == 1) {
        if (pub_send_one(b->jobs[0], b->states[0], b->tx[0].data, b->tx[0].len, true) != KILN_OK)
            cons_job_abandon(b->jobs[0], "publish failed");
        free(b->tx[0].data);
        return;
    }
    Kiln__V1__TransitionBatch tb = KILN__V1__TRANSITION_BATCH__INIT;
    tb.n_transitions = n;
    tb.transitions = b->tx;
    uint8_t *buf = NULL;
    size_t len = 0;
    char count[24];
    snprintf(count, sizeof count, "%zu", n);
    kiln_status ks = kiln_pb_pack((const ProtobufCMessage *)&tb, &buf, &len);
    if (ks == KILN_OK) ks = pub_send(b->jobs, n, buf, len, KILN_HDR_TX_BATCH, count, NULL);
    if (ks != KILN_OK) {
        LOG_WARN("transition batch publish failed jobs=%zu status=%s", n, kiln_status_str(ks));
        for (size_t i = 0; i < n; i++) cons_job_abandon(b->jobs[i], "publish failed");
    } else {
        LOG_DEBUG("transition batch publish jobs=%zu bytes=%zu", n, len);
        kiln_metric_add(cons_g.m_tx_batches, 1);
        kiln_metric_add(cons_g.m_tx_batched, (int64_t)n);
    }
    free(buf);
    for (size_t i = 0; i < n; i++) free(b->tx[i].data);
}

void cons_publish_batch_end(void)
{
    pub_round.on = false;
    pub_batch_flush(&pub_round);
    cons_image_stage_end();
}

kiln_status cons_publish_transition(cons_job *j, Kiln__V1__JobState st, bool track)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status ks = pub_pack_transition(j, st, &buf, &len);
    if (ks != KILN_OK) return ks;
    pub_batch *b = &pub_round;
    if (track && b->on) {
        if (b->n == PUB_BATCH_MAX || b->bytes + len > PUB_BATCH_BYTES) pub_batch_flush(b);
        b->jobs[b->n] = j;
        b->states[b->n] = st;
        b->tx[b->n].data = buf;
        b->tx[b->n].len = len;
        b->n++;
        b->bytes += len;
        return KILN_OK; /* j waits for the round's end, then for the ack */
    }
    if (pub_names_pack(j, st) && (ks = cons_image_flush()) != KILN_OK) {
        free(buf);
        return ks; /* its image was lost: the caller abandons j */
    }
    ks = pub_send_one(j, st, buf, len, track);
    free(buf);
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
    /* Look the jobs up before the message is freed: its address is the key
     * (a batch's jobs all wait on the one message). */
    cons_job *jobs[PUB_BATCH_MAX];
    size_t n = cons_registry_take_pub(msg, jobs, PUB_BATCH_MAX);
    if (ok) cons_txcheck_keep(msg, pa->Sequence); /* checked after a reconnect */
    if (!ok) {
        snprintf(err, sizeof err, "%s",
                 pae != NULL && pae->ErrText != NULL ? pae->ErrText : "publish failed");
        LOG_WARN("publish not acknowledged subject=%s tracked=%zu error=\"%s\"",
                 natsMsg_GetSubject(msg) != NULL ? natsMsg_GetSubject(msg) : "-", n, err);
    }
    natsMsg_Destroy(msg);
    for (size_t i = 0; i < n; i++) cons_job_published(jobs[i], ok, err);
}
