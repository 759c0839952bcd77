/* apply.c - the store's transition rules (one switch) and how a record
 * change becomes one set of writes in a RocksDB batch.
 *
 * Records are changed by building a new JobRecord on the stack whose fields
 * point into the old record and the transition (shallow copies), packing it,
 * and only then freeing the old record and the transition: nothing is ever
 * freed through the stack copy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "clock.h"
#include "idem.h"
#include "keys.h"
#include "log.h"
#include "pb.h"

#define S_PENDING KILN__V1__JOB_STATE__JOB_STATE_PENDING
#define S_PROCESSING KILN__V1__JOB_STATE__JOB_STATE_PROCESSING
#define S_COMPLETED KILN__V1__JOB_STATE__JOB_STATE_COMPLETED
#define S_FAILED KILN__V1__JOB_STATE__JOB_STATE_FAILED
#define S_CANCELLED KILN__V1__JOB_STATE__JOB_STATE_CANCELLED

/* ---- jobs.done list ---------------------------------------------------- */

void apply_done_reset(apply_done_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].status_pb);
        l->items[i].status_pb = NULL;
    }
    l->n = 0;
}

void apply_done_free(apply_done_list *l)
{
    if (l == NULL) return;
    apply_done_reset(l);
    free(l->items);
    l->items = NULL;
    l->cap = 0;
}

static kiln_status apply_done_add(apply_done_list *l, const Kiln__V1__JobStatus *status)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        apply_done *items = realloc(l->items, cap * sizeof *items);
        if (items == NULL) return KILN_ENOMEM;
        l->items = items;
        l->cap = cap;
    }
    apply_done *d = &l->items[l->n];
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", status->id);
    d->state = status->state;
    kiln_status st = kiln_pb_pack(&status->base, &d->status_pb, &d->status_len);
    if (st != KILN_OK) return st;
    l->n++;
    return KILN_OK;
}

static void apply_counters_clear(apply_sink *s)
{
    for (size_t i = 0; i < s->ncounters; i++) s->counter_index[s->counters[i].slot] = 0;
    s->ncounters = 0;
}

void apply_sink_reset(apply_sink *s)
{
    apply_done_reset(&s->done);
    events_reset(&s->events);
    apply_counters_clear(s);
    s->replay = 0;
}

void apply_sink_free(apply_sink *s)
{
    if (s == NULL) return;
    apply_done_free(&s->done);
    events_free(&s->events);
    free(s->counters);
    free(s->counter_index);
    s->counters = NULL;
    s->counter_index = NULL;
    s->ncounters = s->capcounters = s->nindex = 0;
}

static size_t apply_counter_hash(const uint8_t *key, size_t klen)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < klen; i++) h = (h ^ key[i]) * 1099511628211ULL;
    return (size_t)h;
}

/* The index slot of key: holding its counter, or free (the index is never full). */
static uint32_t *apply_counter_slot(const apply_sink *s, const uint8_t *key, size_t klen)
{
    size_t mask = s->nindex - 1, i = apply_counter_hash(key, klen) & mask;
    for (;;) {
        uint32_t *slot = &s->counter_index[i];
        if (*slot == 0) return slot;
        const apply_counter *c = &s->counters[*slot - 1];
        if (c->klen == klen && memcmp(c->key, key, klen) == 0) return slot;
        i = (i + 1) & mask;
    }
}

/* Doubles the index (at least 64 slots) and places every counter again. */
static kiln_status apply_counter_grow_index(apply_sink *s)
{
    size_t n = s->nindex ? s->nindex * 2 : 64;
    uint32_t *index = calloc(n, sizeof *index);
    if (index == NULL) return KILN_ENOMEM;
    free(s->counter_index);
    s->counter_index = index;
    s->nindex = n;
    for (size_t i = 0; i < s->ncounters; i++) {
        apply_counter *c = &s->counters[i];
        uint32_t *slot = apply_counter_slot(s, c->key, c->klen);
        *slot = (uint32_t)(i + 1);
        c->slot = (uint32_t)(slot - s->counter_index);
    }
    return KILN_OK;
}

/* Adds delta to the batch's change of counter key. */
static kiln_status apply_counter_defer(apply_sink *s, const uint8_t *key, size_t klen, int delta)
{
    if (2 * (s->ncounters + 1) > s->nindex && apply_counter_grow_index(s) != KILN_OK)
        return KILN_ENOMEM;
    uint32_t *slot = apply_counter_slot(s, key, klen);
    if (*slot == 0) {
        if (s->ncounters == s->capcounters) {
            size_t cap = s->capcounters ? s->capcounters * 2 : 32;
            apply_counter *tab = realloc(s->counters, cap * sizeof *tab);
            if (tab == NULL) return KILN_ENOMEM;
            s->counters = tab;
            s->capcounters = cap;
        }
        apply_counter *c = &s->counters[s->ncounters++];
        memcpy(c->key, key, klen);
        c->klen = klen;
        c->delta = 0;
        c->slot = (uint32_t)(slot - s->counter_index);
        *slot = (uint32_t)s->ncounters;
    }
    s->counters[*slot - 1].delta += delta;
    return KILN_OK;
}

/* Reads the counter at key, adds delta (never below zero) and stages it. */
static kiln_status apply_counter_write(db_store *db, db_batch *wb,
                                       const uint8_t *key, size_t klen, int64_t delta)
{
    uint64_t v = 0;
    kiln_status st = db_get_u64(db, wb, DB_CF_COUNTERS, key, klen, &v);
    if (st != KILN_OK) return st;
    if (delta < 0 && v < (uint64_t)-delta) v = 0; /* never wrap below zero */
    else v = (uint64_t)((int64_t)v + delta);
    db_put_u64(db, wb, DB_CF_COUNTERS, key, klen, v);
    return KILN_OK;
}

kiln_status apply_sink_flush_counters(db_store *db, db_batch *wb, apply_sink *s)
{
    kiln_status st = KILN_OK;
    for (size_t i = 0; i < s->ncounters && st == KILN_OK; i++) {
        const apply_counter *c = &s->counters[i];
        if (c->delta != 0) st = apply_counter_write(db, wb, c->key, c->klen, c->delta);
    }
    apply_counters_clear(s);
    return st;
}

/* ---- record + indexes + counters in one batch -------------------------- */

static int apply_is_active(Kiln__V1__JobState s) { return s == S_PENDING || s == S_PROCESSING; }

/* Unviewed means: terminal and not viewed. A job marked viewed before it
 * ended keeps the flag, so it never counts as unviewed (the user has seen
 * it; the flag is never reset by later transitions). */
static int apply_is_unviewed(const Kiln__V1__JobRecord *r)
{
    return r != NULL && kiln_state_is_terminal(r->status->state) && !r->viewed;
}

/* Changes a user counter: at once in wb, or summed in defer (the batch's sink). */
static kiln_status apply_counter_add(db_store *db, db_batch *wb, apply_sink *defer,
                                     const char *user, keys_counter_kind kind, int delta)
{
    if (delta == 0) return KILN_OK;
    uint8_t key[KEYS_MAX];
    size_t klen = keys_counter(key, user, kind);
    if (klen == 0) return KILN_EINVAL;
    if (defer != NULL) return apply_counter_defer(defer, key, klen, delta);
    return apply_counter_write(db, wb, key, klen, delta);
}

/* Is old -> nw worth an event? Re-applying the same state and attempt
 * (a duplicate transition) is not. */
static int apply_visible(const Kiln__V1__JobRecord *old, const Kiln__V1__JobRecord *nw,
                         events_kind *kind)
{
    *kind = EVENTS_STATE;
    if (old == NULL || old->status->state != nw->status->state ||
        old->status->attempts != nw->status->attempts)
        return 1;
    if (!old->viewed && nw->viewed) {
        *kind = EVENTS_VIEWED;
        return 1;
    }
    return 0;
}

int64_t apply_finished_at(const Kiln__V1__JobRecord *rec)
{
    int64_t at = rec->status->completed_at_ms;
    return at > 0 && at < rec->updated_at_ms ? at : rec->updated_at_ms;
}

/* apply_stage_record; counter changes go to defer when it is non-NULL. */
static kiln_status apply_stage(db_store *db, db_batch *wb,
                               const Kiln__V1__JobRecord *old, const Kiln__V1__JobRecord *nw,
                               events_list *ev, apply_sink *defer)
{
    const char *id = nw->request->id;
    const char *user = nw->request->user_id;
    int64_t created = nw->status->created_at_ms;
    Kiln__V1__JobState ns = nw->status->state;
    Kiln__V1__JobState os = old != NULL ? old->status->state : KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
    uint8_t key[KEYS_MAX];
    size_t klen = 0;
    uint8_t *buf = NULL;
    size_t len = 0;

    events_kind kind = EVENTS_STATE;
    kiln_status st = kiln_pb_pack(&nw->base, &buf, &len);
    if (st != KILN_OK) return st;
    db_batch_put(wb, DB_CF_JOBS, id, strlen(id), (const char *)buf, len);
    /* The event carries the bytes just written: no second pack, no read. */
    if (ev != NULL && apply_visible(old, nw, &kind)) st = events_add_packed(ev, nw, kind, &buf, len);
    free(buf);
    if (st != KILN_OK) return st;

    if (old == NULL) {
        klen = keys_by_user(key, user, created, id);
        if (klen == 0) return KILN_EINVAL;
        db_batch_put(wb, DB_CF_BY_USER, (const char *)key, klen, "", 0);
    }
    if (old == NULL || os != ns) {
        if (old != NULL) {
            klen = keys_by_user_state(key, user, os, created, id);
            if (klen == 0) return KILN_EINVAL;
            db_batch_delete(wb, DB_CF_BY_USER_STATE, (const char *)key, klen);
        }
        klen = keys_by_user_state(key, user, ns, created, id);
        if (klen == 0) return KILN_EINVAL;
        db_batch_put(wb, DB_CF_BY_USER_STATE, (const char *)key, klen, "", 0);
    }
    int ou = apply_is_unviewed(old), nu = apply_is_unviewed(nw);
    if (ou != nu) {
        klen = keys_by_user(key, user, created, id);
        if (klen == 0) return KILN_EINVAL;
        if (nu) db_batch_put(wb, DB_CF_UNVIEWED, (const char *)key, klen, "", 0);
        else db_batch_delete(wb, DB_CF_UNVIEWED, (const char *)key, klen);
    }
    /* A job that just ended starts its retention clock (retention.c). */
    if (kiln_state_is_terminal(ns) && (old == NULL || !kiln_state_is_terminal(os))) {
        klen = keys_finished(key, apply_finished_at(nw), id);
        if (klen == 0) return KILN_EINVAL;
        db_batch_put(wb, DB_CF_FINISHED, (const char *)key, klen, "", 0);
    }
    int oa = old != NULL && apply_is_active(os), na = apply_is_active(ns);
    st = apply_counter_add(db, wb, defer, user, KEYS_COUNTER_ACTIVE, na - oa);
    if (st == KILN_OK) st = apply_counter_add(db, wb, defer, user, KEYS_COUNTER_UNVIEWED, nu - ou);
    return st;
}

kiln_status apply_stage_remove(db_store *db, db_batch *wb, const Kiln__V1__JobRecord *rec)
{
    const char *id = rec->request->id;
    const char *user = rec->request->user_id;
    int64_t created = rec->status->created_at_ms;
    uint8_t key[KEYS_MAX];
    size_t klen = keys_by_user(key, user, created, id);
    if (klen == 0) return KILN_EINVAL;
    db_batch_delete(wb, DB_CF_JOBS, id, strlen(id));
    db_batch_delete(wb, DB_CF_BY_USER, (const char *)key, klen);
    int unviewed = apply_is_unviewed(rec);
    if (unviewed) db_batch_delete(wb, DB_CF_UNVIEWED, (const char *)key, klen);
    klen = keys_by_user_state(key, user, rec->status->state, created, id);
    if (klen == 0) return KILN_EINVAL;
    db_batch_delete(wb, DB_CF_BY_USER_STATE, (const char *)key, klen);
    kiln_status st = apply_counter_add(db, wb, NULL, user, KEYS_COUNTER_ACTIVE,
                                       -apply_is_active(rec->status->state));
    if (st == KILN_OK) st = apply_counter_add(db, wb, NULL, user, KEYS_COUNTER_UNVIEWED, -unviewed);
    return st;
}

kiln_status apply_stage_record(db_store *db, db_batch *wb,
                               const Kiln__V1__JobRecord *old, const Kiln__V1__JobRecord *nw,
                               events_list *ev)
{
    return apply_stage(db, wb, old, nw, ev, NULL);
}

/* ---- the rules ---------------------------------------------------------- */

apply_rule apply_decide(const Kiln__V1__JobStatus *cur, Kiln__V1__JobState to, uint32_t attempt)
{
    if (kiln_state_is_terminal(cur->state))
        return to == cur->state ? APPLY_RULE_REPUBLISH : APPLY_RULE_IGNORE;
    switch (to) {
    case S_CANCELLED:
        /* The store's own decision (kiln.store.cancel / jobs.cancel): it
         * carries the attempt count the store saw, which a PROCESSING
         * published meanwhile may have passed. Never stale. */
        return APPLY_RULE_APPLY;
    case S_PROCESSING:
        if (attempt < cur->attempts) return APPLY_RULE_IGNORE; /* an earlier attempt */
        /* Pending with attempts == attempt means that attempt was already
         * handed back for a retry: this PROCESSING is a late duplicate. */
        if (cur->state == S_PENDING && cur->attempts > 0 && attempt == cur->attempts)
            return APPLY_RULE_IGNORE;
        return APPLY_RULE_APPLY;
    case S_PENDING:   /* retry after a retryable failure of `attempt` */
    case S_COMPLETED: /* a consumer's result */
    case S_FAILED:
        return attempt < cur->attempts ? APPLY_RULE_IGNORE : APPLY_RULE_APPLY;
    default: return APPLY_RULE_IGNORE; /* UNSPECIFIED or unknown enum values */
    }
}

/* A fresh pending record built from req, pointing into it. */
static void apply_record_init(Kiln__V1__JobRecord *rec, Kiln__V1__JobStatus *status,
                              const Kiln__V1__JobRequest *req, int64_t fallback_created_ms)
{
    kiln__v1__job_record__init(rec);
    kiln__v1__job_status__init(status);
    rec->request = (Kiln__V1__JobRequest *)req;
    rec->status = status;
    status->id = req->id;
    status->user_id = req->user_id;
    status->prompt = req->prompt;
    status->state = S_PENDING;
    status->created_at_ms = req->created_at_ms > 0 ? req->created_at_ms : fallback_created_ms;
    rec->updated_at_ms = kiln_now_ms();
}

static int apply_user_ok(const char *user)
{
    size_t n = user != NULL ? strlen(user) : 0;
    return n > 0 && n <= KILN_USER_MAX_LEN;
}

/* A NATS publisher's Idempotency-Key: record (user, key) -> id when free,
 * with the same TTL as the gateway's reservations. */
static kiln_status apply_idem_from_request(db_store *db, db_batch *wb,
                                           const Kiln__V1__JobRequest *req, int64_t now_ms)
{
    uint8_t hash[IDEM_HASH_LEN];
    idem_result res;
    if (req->idempotency_key == NULL || req->idempotency_key[0] == '\0') return KILN_OK;
    kiln_status st = idem_request_hash(req, hash);
    if (st == KILN_OK)
        st = idem_reserve(db, wb, req->user_id, req->idempotency_key, hash, req->id, now_ms, &res);
    if (st == KILN_EINVAL) return KILN_OK; /* validated already; nothing to record */
    if (st == KILN_OK && !res.is_new && strcmp(res.id, req->id) != 0)
        LOG_INFO("idempotency key already names another job job=%s other=%s", req->id, res.id);
    return st;
}

kiln_status apply_job_request(db_store *db, db_batch *wb, const char *subject, const void *data,
                              size_t len, int64_t fallback_created_ms, uint64_t seq,
                              apply_sink *sink, int *changed)
{
    kiln_status st = KILN_OK;
    Kiln__V1__JobRequest *req = NULL;
    Kiln__V1__JobRecord *old = NULL;
    char field[64] = "", msg[256] = "";
    *changed = 0;

    if (len > KILN_PB_MAX_BYTES) return KILN_EINVAL;
    req = kiln__v1__job_request__unpack(NULL, len, data);
    if (req == NULL) return KILN_EINVAL;
    kiln_pb_drop_unknown(&req->base); /* the record keeps the request */
    if (kiln_jobreq_validate(req, field, sizeof field, msg, sizeof msg) != KILN_OK) {
        LOG_DEBUG("ignores invalid job request field=%s", field);
        st = KILN_EINVAL;
        goto out;
    }
    /* The record, GET and the sweep's re-drive follow the lane. */
    (void)kiln_subject_priority(subject, &req->priority);
    st = db_load_record(db, NULL, wb, req->id, &old);
    if (st == KILN_OK) {
        /* Known already: a replay or a duplicate. A replay announces the
         * new record again if nothing has happened to it since. */
        if (sink->replay && old->status->state == S_PENDING && old->status->attempts == 0 &&
            old->request_seq == seq)
            st = events_add_replayed(&sink->events, old, EVENTS_STATE);
        goto out;
    }
    if (st != KILN_ENOTFOUND) goto out;

    Kiln__V1__JobRecord rec;
    Kiln__V1__JobStatus status;
    apply_record_init(&rec, &status, req, fallback_created_ms);
    rec.request_seq = seq;
    st = apply_stage(db, wb, NULL, &rec, &sink->events, sink->defer_counters ? sink : NULL);
    if (st == KILN_OK) st = apply_idem_from_request(db, wb, req, fallback_created_ms);
    if (st == KILN_OK) *changed = 1;
out:
    if (old != NULL) kiln__v1__job_record__free_unpacked(old, NULL);
    if (req != NULL) kiln__v1__job_request__free_unpacked(req, NULL);
    return st;
}

/* Applies t to the record of t->request->id (old, NULL when there is none). */
static kiln_status apply_one(db_store *db, db_batch *wb,
                             const Kiln__V1__JobRecord *old, const Kiln__V1__JobTransition *t,
                             apply_sink *sink, int *changed)
{
    Kiln__V1__JobRecord rec;
    Kiln__V1__JobStatus status;
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    int64_t now = kiln_now_ms();
    int64_t at = t->at_ms > 0 ? t->at_ms : now;

    if (old != NULL) {
        rec = *old;
        status = *old->status;
        rec.status = &status;
    } else {
        apply_record_init(&rec, &status, t->request, now);
    }

    switch (apply_decide(&status, t->state, t->attempt)) {
    case APPLY_RULE_IGNORE:
        LOG_DEBUG("transition ignored job=%s state=%s attempt=%u current=%s attempts=%u",
                  status.id, kiln_state_name(t->state), t->attempt, kiln_state_name(status.state),
                  status.attempts);
        /* A replayed transition whose effect is the record as it stands:
         * its event may not have reached KILN_EVENTS the first time. */
        if (sink->replay && old != NULL && status.state == t->state && status.attempts == t->attempt)
            return events_add_replayed(&sink->events, old, EVENTS_STATE);
        return KILN_OK;
    case APPLY_RULE_REPUBLISH: {
        /* Only a redelivered message re-announces: the store may have crashed
         * between writing the state and confirming its jobs.done (KILN_DONE
         * drops the copy by Nats-Msg-Id if it was not lost; the event is
         * rechecked, events.h). A new message with
         * the same terminal state, e.g. the consumer's CANCELLED after the
         * store's own, announces nothing: duplicates only on crash replay. */
        if (!sink->replay) return KILN_OK;
        kiln_status st = apply_done_add(&sink->done, &status);
        if (st == KILN_OK) st = events_add_replayed(&sink->events, old, EVENTS_STATE);
        return st;
    }
    case APPLY_RULE_APPLY: break;
    }

    /* A quick provider call publishes no PROCESSING, and a slow one publishes
     * it late: the transition carries when the attempt began. */
    if (t->started_at_ms > 0 && status.started_at_ms == 0) status.started_at_ms = t->started_at_ms;
    /* What each applied transition writes (apply_decide chose APPLY). */
    switch (t->state) {
    case S_PROCESSING: /* attempt starts: started_at on the first one */
        status.attempts = t->attempt;
        if (status.started_at_ms == 0) status.started_at_ms = at;
        status.error = NULL; /* a new attempt: the previous attempt's error is history */
        rec.progress = t->progress;
        rec.retry_at_ms = 0;
        break;
    case S_PENDING: /* retry: keeps the failed attempt's error until the next start */
        status.attempts = t->attempt;
        status.error = t->error;
        rec.progress = NULL;
        rec.retry_at_ms = t->retry_at_ms;
        break;
    case S_COMPLETED: /* terminal: images/error, completed_at; jobs.done after the write */
    case S_FAILED:
    case S_CANCELLED: /* the store's cancel; the apply loop also broadcasts kiln.cancelled.<id> */
        if (t->attempt > status.attempts) status.attempts = t->attempt;
        status.n_images = t->n_images;
        status.images = t->images;
        rec.n_blobs = t->n_blobs;
        rec.blobs = t->blobs;
        status.error = t->error;
        if (status.error == NULL && t->state != S_COMPLETED) {
            err.code = t->state == S_CANCELLED ? "cancelled" : "failed";
            err.message = t->state == S_CANCELLED ? "cancelled by request" : "the job failed";
            status.error = &err;
        }
        if (t->state == S_COMPLETED) status.error = NULL;
        status.completed_at_ms = at;
        rec.progress = NULL;
        rec.retry_at_ms = 0;
        break;
    default: return KILN_OK; /* apply_decide never says APPLY for these */
    }
    status.state = t->state;
    rec.updated_at_ms = now;

    kiln_status st =
        apply_stage(db, wb, old, &rec, &sink->events, sink->defer_counters ? sink : NULL);
    if (st != KILN_OK) return st;
    *changed = 1;
    if (kiln_state_is_terminal(status.state)) return apply_done_add(&sink->done, &status);
    return KILN_OK;
}

kiln_status apply_reannounce(db_store *db, const char *id, apply_sink *sink)
{
    Kiln__V1__JobRecord *rec = NULL;
    kiln_status st = db_load_record(db, NULL, NULL, id, &rec);
    if (st == KILN_ENOTFOUND) return KILN_OK;
    if (st != KILN_OK) return st;
    if (rec->status != NULL && kiln_state_is_terminal(rec->status->state)) {
        st = apply_done_add(&sink->done, rec->status);
        if (st == KILN_OK) st = events_add_replayed(&sink->events, rec, EVENTS_STATE);
    }
    kiln__v1__job_record__free_unpacked(rec, NULL);
    return st;
}

kiln_status apply_transition(db_store *db, db_batch *wb, const void *data,
                             size_t len, apply_sink *sink, int *changed)
{
    kiln_status st = KILN_OK;
    Kiln__V1__JobTransition *t = NULL;
    Kiln__V1__JobRecord *old = NULL;
    *changed = 0;

    if (len > KILN_PB_MAX_BYTES) return KILN_EINVAL;
    t = kiln__v1__job_transition__unpack(NULL, len, data);
    if (t == NULL) return KILN_EINVAL;
    kiln_pb_drop_unknown(&t->base); /* the record keeps parts of it */
    if (t->request == NULL || !kiln_jobreq_id_ok(t->request->id) ||
        !apply_user_ok(t->request->user_id)) {
        st = KILN_EINVAL;
        goto out;
    }
    st = db_load_record(db, NULL, wb, t->request->id, &old);
    if (st != KILN_OK && st != KILN_ENOTFOUND) goto out;
    st = apply_one(db, wb, old, t, sink, changed);
out:
    if (old != NULL) kiln__v1__job_record__free_unpacked(old, NULL);
    if (t != NULL) kiln__v1__job_transition__free_unpacked(t, NULL);
    return st;
}

kiln_status apply_load_owned(db_store *db, db_batch *wb, const char *id,
                             const char *user, Kiln__V1__JobRecord **out)
{
    Kiln__V1__JobRecord *rec = NULL;
    if (!kiln_jobreq_id_ok(id)) return KILN_ENOTFOUND;
    kiln_status st = db_load_record(db, NULL, wb, id, &rec);
    if (st != KILN_OK) return st;
    if (user != NULL && user[0] != '\0' && strcmp(user, rec->request->user_id) != 0) {
        kiln__v1__job_record__free_unpacked(rec, NULL);
        return KILN_ENOTFOUND;
    }
    *out = rec;
    return KILN_OK;
}

kiln_status apply_viewed(db_store *db, db_batch *wb, const char *id,
                         const char *user, events_list *ev)
{
    Kiln__V1__JobRecord *old = NULL;
    kiln_status st = apply_load_owned(db, wb, id, user, &old);
    if (st != KILN_OK) return st;
    if (!old->viewed) {
        Kiln__V1__JobRecord rec = *old;
        rec.viewed = 1;
        rec.updated_at_ms = kiln_now_ms();
        st = apply_stage_record(db, wb, old, &rec, ev);
    }
    kiln__v1__job_record__free_unpacked(old, NULL);
    return st;
}
