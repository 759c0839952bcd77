/* events.c - the store's feed of record changes for Server-Sent Events:
 * subjects, event keys and publishing (see events.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"

static size_t events_batch_bytes = EVENTS_BATCH_BYTES;

void events_set_max_payload(int64_t max_payload)
{
    if (max_payload > 0 && (size_t)max_payload / 2 < EVENTS_BATCH_BYTES)
        events_batch_bytes = (size_t)max_payload / 2;
}

size_t events_subject(char *buf, size_t buflen, const char *user, const char *id)
{
    static const char digits[] = "0123456789abcdef";
    size_t ulen = strlen(user), tlen = strlen(id);
    size_t plen = sizeof KILN_SUBJ_EVENTS_PREFIX - 1;
    size_t need = plen + 2 * ulen + 1 + tlen;
    if (ulen == 0 || tlen == 0 || ulen > KILN_USER_MAX_LEN || tlen > KILN_ID_MAX_LEN ||
        need + 1 > buflen)
        return 0;
    memcpy(buf, KILN_SUBJ_EVENTS_PREFIX, plen);
    char *p = buf + plen;
    for (size_t i = 0; i < ulen; i++) {
        uint8_t c = (uint8_t)user[i];
        *p++ = digits[c >> 4];
        *p++ = digits[c & 0x0f];
    }
    *p++ = '.';
    memcpy(p, id, tlen);
    p[tlen] = '\0';
    return need;
}

size_t events_new_subject(char *buf, size_t buflen, const char *user)
{
    return events_subject(buf, buflen, user, KILN_EVENTS_NEW_TOKEN);
}

void events_key(char *buf, size_t buflen, const char *id, Kiln__V1__JobState state,
                  uint32_t attempts, events_kind kind)
{
    snprintf(buf, buflen, "%s.%s.%u.ev", id, kind == EVENTS_VIEWED ? "viewed" : kiln_state_name(state),
             attempts);
}

kiln_status events_add_packed(events_list *l, const Kiln__V1__JobRecord *rec, events_kind kind,
                              uint8_t **pb, size_t len)
{
    const char *id = rec->request->id, *user = rec->request->user_id;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        events_item *items = realloc(l->items, cap * sizeof *items);
        if (items == NULL) return KILN_ENOMEM;
        l->items = items;
        l->cap = cap;
    }
    events_item *e = &l->items[l->n];
    e->state = rec->status->state;
    /* Pending at attempt 0 is only ever a record's first state: a later
     * change to it would be invisible (same state and attempts). */
    e->fresh = kind == EVENTS_STATE && e->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING &&
               rec->status->attempts == 0;
    size_t slen = e->fresh ? events_new_subject(e->subject, sizeof e->subject, user)
                           : events_subject(e->subject, sizeof e->subject, user, id);
    if (slen == 0 || id[0] == '\0' || strlen(id) > KILN_ID_MAX_LEN) return KILN_EINVAL;
    snprintf(e->id, sizeof e->id, "%s", id);
    events_key(e->key, sizeof e->key, id, e->state, rec->status->attempts, kind);
    e->attempts = rec->status->attempts;
    e->kind = kind;
    e->recheck = false;
    e->record_pb = *pb;
    e->record_len = len;
    *pb = NULL;
    l->n++;
    return KILN_OK;
}

kiln_status events_add_replayed(events_list *l, const Kiln__V1__JobRecord *rec, events_kind kind)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_pb_pack(&rec->base, &buf, &len);
    if (st == KILN_OK) st = events_add_packed(l, rec, kind, &buf, len);
    if (st == KILN_OK) l->items[l->n - 1].recheck = true;
    free(buf);
    return st;
}

void events_reset(events_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].record_pb);
        l->items[i].record_pb = NULL;
    }
    l->n = 0;
}

void events_free(events_list *l)
{
    if (l == NULL) return;
    events_reset(l);
    free(l->items);
    l->items = NULL;
    l->cap = 0;
}

/* Builds the message of e: the JobRecord with Kiln-Event-Key, Kiln-Job-Id
 * and Kiln-Status headers. */
static kiln_status events_msg(const events_item *e, natsMsg **out)
{
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, e->subject, NULL, (const char *)e->record_pb, (int)e->record_len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_EVENT_KEY, e->key);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_JOB_ID, e->id);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, KILN_HDR_STATUS, kiln_state_name(e->state));
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return kiln_nats_status(s);
    }
    *out = m;
    return KILN_OK;
}

/* A failed last-event lookup (not "there is none") is only worth a debug line. */
static void events_log_lookup(const char *id, natsStatus s, jsErrCode jerr)
{
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr)
        LOG_DEBUG("last event lookup failed job=%s status=%s jerr=%d", id, natsStatus_GetText(s),
                  (int)jerr);
}

/* The jobs whose first event one user's last EventBatch holds. Read once
 * per user while a list is checked: a replayed batch re-announces its jobs
 * together, so one lookup and one unpack serve all of that user's. */
typedef struct {
    char subject[EVENTS_SUBJECT_MAX]; /* "" = nothing read yet */
    char (*ids)[KILN_ID_MAX_LEN + 1];
    size_t n;
} events_last_batch;

static void events_last_batch_free(events_last_batch *lb)
{
    free(lb->ids);
    lb->ids = NULL;
    lb->n = 0;
    lb->subject[0] = '\0';
}

/* Reads the last EventBatch on e's subject into lb, unless lb holds it
 * already. Empty when there is none or the stream cannot tell (then the
 * event goes out: a repeat is better than a loss). */
static void events_last_batch_read(jsCtx *js, const events_item *e, events_last_batch *lb)
{
    if (strcmp(lb->subject, e->subject) == 0) return;
    events_last_batch_free(lb);
    snprintf(lb->subject, sizeof lb->subject, "%s", e->subject);
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetLastMsg(&m, js, KILN_STREAM_EVENTS, e->subject, NULL, &jerr);
    events_log_lookup(e->id, s, jerr);
    int len = s == NATS_OK ? natsMsg_GetDataLength(m) : -1;
    Kiln__V1__EventBatch *b =
        len >= 0 && len <= KILN_PB_MAX_BYTES
            ? kiln__v1__event_batch__unpack(NULL, (size_t)len, (const uint8_t *)natsMsg_GetData(m))
            : NULL;
    if (b != NULL && b->n_records > 0) lb->ids = malloc(b->n_records * sizeof *lb->ids);
    for (size_t i = 0; lb->ids != NULL && i < b->n_records; i++) {
        Kiln__V1__JobRecord *rec =
            kiln__v1__job_record__unpack(NULL, b->records[i].len, b->records[i].data);
        if (rec != NULL && rec->request != NULL && rec->status != NULL &&
            rec->status->state == KILN__V1__JOB_STATE__JOB_STATE_PENDING && rec->status->attempts == 0)
            snprintf(lb->ids[lb->n++], sizeof lb->ids[0], "%s", rec->request->id);
        if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    if (b != NULL) kiln__v1__event_batch__free_unpacked(b, NULL);
    natsMsg_Destroy(m);
}

static bool events_last_batch_holds(const events_last_batch *lb, const char *id)
{
    for (size_t i = 0; i < lb->n; i++)
        if (strcmp(lb->ids[i], id) == 0) return true;
    return false;
}

/* Is e already the last event on its subject (for a first event: in its
 * user's last EventBatch, read through lb when given)? Only a replay asks
 * (one request to the stream). When the stream cannot tell, the answer is
 * no: a repeated event is better than a lost one. */
static bool events_already_published(jsCtx *js, const events_item *e, events_last_batch *lb)
{
    bool same = false;
    if (e->fresh) {
        events_last_batch local = {0};
        events_last_batch *use = lb != NULL ? lb : &local;
        events_last_batch_read(js, e, use);
        same = events_last_batch_holds(use, e->id);
        events_last_batch_free(&local);
    } else {
        natsMsg *last = NULL;
        const char *key = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetLastMsg(&last, js, KILN_STREAM_EVENTS, e->subject, NULL, &jerr);
        events_log_lookup(e->id, s, jerr);
        if (s == NATS_OK && natsMsgHeader_Get(last, KILN_HDR_EVENT_KEY, &key) == NATS_OK) {
            const char *state = NULL;
            char viewed[EVENTS_KEY_MAX];
            same = strcmp(key, e->key) == 0;
            /* A viewed event after the change re-states the same record. */
            if (!same && e->kind == EVENTS_STATE) {
                events_key(viewed, sizeof viewed, e->id, e->state, e->attempts, EVENTS_VIEWED);
                same = strcmp(key, viewed) == 0 &&
                       natsMsgHeader_Get(last, KILN_HDR_STATUS, &state) == NATS_OK &&
                       strcmp(state, kiln_state_name(e->state)) == 0;
            }
        }
        natsMsg_Destroy(last);
    }
    if (same) LOG_DEBUG("event already published job=%s key=%s", e->id, e->key);
    return same;
}

/* Does an earlier item of l (published just before, maybe not stored yet)
 * carry key? Replays are rare, so a scan is fine. */
static bool events_listed_before(const events_list *l, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(l->items[k].key, l->items[i].key) == 0) return true;
    return false;
}

/* Should item i be skipped: a re-announcement already out? */
static bool events_skip(jsCtx *js, const events_list *l, size_t i, events_last_batch *lb)
{
    if (!l->items[i].recheck) return false;
    return events_listed_before(l, i) || events_already_published(js, &l->items[i], lb);
}

/* One message to publish and the item it (first) announces. */
typedef struct {
    natsMsg *msg;
    const events_item *first;
} events_out;

typedef struct {
    events_out *items;
    size_t n;
} events_outs;

static void events_outs_free(events_outs *o)
{
    for (size_t i = 0; i < o->n; i++) natsMsg_Destroy(o->items[i].msg);
    free(o->items);
    o->items = NULL;
    o->n = 0;
}

/* First events in subject (user) order, list order within a user. */
static int events_cmp_fresh(const void *a, const void *b)
{
    const events_item *x = *(const events_item *const *)a, *y = *(const events_item *const *)b;
    int c = strcmp(x->subject, y->subject);
    if (c != 0) return c;
    return x < y ? -1 : x > y;
}

/* The EventBatch of fresh[0..n) (one user): packed records, no copy. */
static kiln_status events_batch_msg(const events_item *const *fresh, size_t n, natsMsg **out)
{
    Kiln__V1__EventBatch b = KILN__V1__EVENT_BATCH__INIT;
    ProtobufCBinaryData *recs = malloc(n * sizeof *recs);
    if (recs == NULL) return KILN_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        recs[i].data = fresh[i]->record_pb;
        recs[i].len = fresh[i]->record_len;
    }
    b.n_records = n;
    b.records = recs;
    uint8_t *buf = NULL;
    size_t len = 0;
    kiln_status st = kiln_pb_pack(&b.base, &buf, &len);
    free(recs);
    if (st != KILN_OK) return st;
    natsStatus s = natsMsg_Create(out, fresh[0]->subject, NULL, (const char *)buf, (int)len);
    free(buf);
    return kiln_nats_status(s);
}

/* Appends the EventBatches of the fresh items: per user, at most
 * KILN_EVENTS_BATCH_MAX records and events_batch_bytes of them each. Sorts fresh. */
static kiln_status events_build_batches(const events_item **fresh, size_t n, events_outs *o)
{
    qsort(fresh, n, sizeof *fresh, events_cmp_fresh);
    size_t i = 0;
    while (i < n) {
        size_t k = i + 1, bytes = fresh[i]->record_len;
        while (k < n && k - i < KILN_EVENTS_BATCH_MAX && strcmp(fresh[k]->subject, fresh[i]->subject) == 0 &&
               bytes + fresh[k]->record_len <= events_batch_bytes)
            bytes += fresh[k++]->record_len;
        events_out *out = &o->items[o->n];
        kiln_status st = events_batch_msg(fresh + i, k - i, &out->msg);
        if (st != KILN_OK) return st;
        out->first = fresh[i];
        o->n++;
        i = k;
    }
    return KILN_OK;
}

/* Builds the messages of l: the EventBatches first (a job's first event
 * precedes its later ones), then every other item in list order. */
static kiln_status events_build(jsCtx *js, const events_list *l, events_outs *o)
{
    o->n = 0;
    o->items = NULL;
    if (l->n == 0) return KILN_OK;
    const events_item **fresh = malloc(l->n * sizeof *fresh);
    bool *skip = calloc(l->n, sizeof *skip);
    o->items = malloc(l->n * sizeof *o->items);
    kiln_status st = fresh != NULL && skip != NULL && o->items != NULL ? KILN_OK : KILN_ENOMEM;
    size_t nfresh = 0;
    events_last_batch lb = {0};
    for (size_t i = 0; st == KILN_OK && i < l->n; i++) {
        skip[i] = events_skip(js, l, i, &lb);
        if (!skip[i] && l->items[i].fresh) fresh[nfresh++] = &l->items[i];
    }
    events_last_batch_free(&lb);
    if (st == KILN_OK) st = events_build_batches(fresh, nfresh, o);
    for (size_t i = 0; st == KILN_OK && i < l->n; i++) {
        if (skip[i] || l->items[i].fresh) continue;
        events_out *out = &o->items[o->n];
        st = events_msg(&l->items[i], &out->msg);
        if (st == KILN_OK) {
            out->first = &l->items[i];
            o->n++;
        }
    }
    free(fresh);
    free(skip);
    if (st != KILN_OK) events_outs_free(o);
    return st;
}

kiln_status events_publish_async(jsCtx *js, const events_list *l)
{
    events_outs o;
    kiln_status st = events_build(js, l, &o);
    if (st != KILN_OK) return st;
    for (size_t i = 0; i < o.n; i++) {
        natsStatus s = js_PublishMsgAsync(js, &o.items[i].msg, NULL);
        if (s != NATS_OK) {
            LOG_WARN("event publish failed job=%s status=%s", o.items[i].first->id,
                     natsStatus_GetText(s));
            events_outs_free(&o); /* the taken ones are NULL */
            return kiln_nats_status(s);
        }
    }
    events_outs_free(&o);
    return KILN_OK;
}

kiln_status events_publish_sync(jsCtx *js, const events_list *l, int tries)
{
    events_outs o;
    kiln_status st = events_build(js, l, &o);
    if (st != KILN_OK) return st;
    for (size_t i = 0; i < o.n; i++) {
        const events_item *e = o.items[i].first;
        natsStatus s = NATS_ERR;
        jsErrCode jerr = 0;
        for (int t = 0; t < tries && s != NATS_OK; t++) {
            /* A failed try may still have been stored (its ack was lost). */
            if (t > 0 && events_already_published(js, e, NULL)) {
                s = NATS_OK;
                break;
            }
            s = js_PublishMsg(NULL, js, o.items[i].msg, NULL, &jerr);
        }
        if (s != NATS_OK) {
            LOG_WARN("event publish failed job=%s status=%s jerr=%d", e->id,
                     natsStatus_GetText(s), (int)jerr);
            st = kiln_nats_status(s);
        }
    }
    events_outs_free(&o);
    return st;
}
