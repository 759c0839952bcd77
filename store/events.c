/* events.c - the store's feed of record changes for Server-Sent Events:
 * subjects, event keys and publishing (see events.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "log.h"
#include "natsconn.h"
#include "pb.h"

size_t events_subject(char *buf, size_t buflen, const char *user, const char *id)
{
    static const char digits[] = "0123456789abcdef";
    size_t ulen = strlen(user), idlen = strlen(id);
    size_t plen = sizeof KILN_SUBJ_EVENTS_PREFIX - 1;
    size_t need = plen + 2 * ulen + 1 + idlen;
    if (ulen == 0 || idlen == 0 || ulen > KILN_USER_MAX_LEN || idlen > KILN_ID_MAX_LEN ||
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
    memcpy(p, id, idlen);
    p[idlen] = '\0';
    return need;
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
    if (events_subject(e->subject, sizeof e->subject, user, id) == 0) return KILN_EINVAL;
    snprintf(e->id, sizeof e->id, "%s", id);
    e->state = rec->status->state;
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

/* Is e already the last event on its subject? Only a replay asks (one
 * request to the stream). When the stream cannot tell, the answer is no: a
 * repeated event is better than a lost one. */
static bool events_already_published(jsCtx *js, const events_item *e)
{
    natsMsg *last = NULL;
    const char *key = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetLastMsg(&last, js, KILN_STREAM_EVENTS, e->subject, NULL, &jerr);
    bool same = false;
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
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSNoMessageFoundErr)
        LOG_DEBUG("last event lookup failed job=%s status=%s jerr=%d", e->id,
                  natsStatus_GetText(s), (int)jerr);
    natsMsg_Destroy(last);
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
static bool events_skip(jsCtx *js, const events_list *l, size_t i)
{
    if (!l->items[i].recheck) return false;
    return events_listed_before(l, i) || events_already_published(js, &l->items[i]);
}

kiln_status events_publish_async(jsCtx *js, const events_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        if (events_skip(js, l, i)) continue;
        natsMsg *m = NULL;
        kiln_status st = events_msg(&l->items[i], &m);
        if (st != KILN_OK) return st;
        natsStatus s = js_PublishMsgAsync(js, &m, NULL);
        natsMsg_Destroy(m); /* NULL when the library took it */
        if (s != NATS_OK) {
            LOG_WARN("event publish failed job=%s status=%s", l->items[i].id, natsStatus_GetText(s));
            return kiln_nats_status(s);
        }
    }
    return KILN_OK;
}

kiln_status events_publish_sync(jsCtx *js, const events_list *l, int tries)
{
    kiln_status st = KILN_OK;
    for (size_t i = 0; i < l->n; i++) {
        const events_item *e = &l->items[i];
        if (events_skip(js, l, i)) continue;
        natsMsg *m = NULL;
        st = events_msg(e, &m);
        if (st != KILN_OK) return st;
        natsStatus s = NATS_ERR;
        jsErrCode jerr = 0;
        for (int t = 0; t < tries && s != NATS_OK; t++) {
            /* A failed try may still have been stored (its ack was lost). */
            if (t > 0 && events_already_published(js, e)) {
                s = NATS_OK;
                break;
            }
            s = js_PublishMsg(NULL, js, m, NULL, &jerr);
        }
        natsMsg_Destroy(m);
        if (s != NATS_OK) {
            LOG_WARN("event publish failed job=%s status=%s jerr=%d", e->id,
                     natsStatus_GetText(s), (int)jerr);
            st = kiln_nats_status(s);
        }
    }
    return st;
}
