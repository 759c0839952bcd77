/* events.h - the store's feed of record changes for Server-Sent Events:
 * every state change it writes, as a JobRecord, on
 * kiln.events.<hex(user_id)>.<id> (stream KILN_EVENTS) - except a record's
 * first event (pending, attempt 0), which goes out with the other new
 * records of the same user and batch in one EventBatch on
 * kiln.events.<hex(user_id)>.$new.
 *
 * Why the first event is batched: it is the one event every job has and
 * the only one a submit pays for, and nats-server's cost is per stored
 * message (a write, per-subject state for a new subject, an ack); a bulk
 * submitter's burst becomes one message. A per-job stream never needs it:
 * it opens with the job's current state from the store (gateway/sse.c),
 * and every later change goes to the job's own subject. A per-user stream
 * (kiln.events.<hex(user)>.>) receives both subjects.
 *
 * The user part is the lower-case hex of the user id's bytes, so any user id
 * makes a valid subject token.
 *
 * Each single event carries the header Kiln-Event-Key
 * "<id>.<state>.<attempts>.ev" ("<id>.viewed.<attempts>.ev" for the viewed
 * flag). Events have no Nats-Msg-Id: nats-server keeps an entry per message
 * id for the stream's duplicate window (2 minutes: millions of entries at
 * full rate, memory and CPU on every event), and it would only catch replays
 * within that window. Duplicates can only come from a replay (a redelivered
 * batch re-announces what it finds written, or a sync publish is retried);
 * such an event is marked recheck and published only if the last event on
 * its subject (one subject per job) has another key - exact, however late
 * the replay. A state change also counts as out when the last event is the
 * same record's viewed event (it re-states the record: same state and
 * attempts). A re-announced first event counts as out when the last
 * EventBatch of its user holds it; when later batches of that user came in
 * between (a batch redelivered after others were applied), it goes out
 * again: the one case where an event can repeat. */
#ifndef STORE_EVENTS_H
#define STORE_EVENTS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobreq.h"
#include "kiln.pb-c.h"
#include "status.h"
#include "subjects.h"

#define EVENTS_SUBJECT_MAX \
    (sizeof KILN_SUBJ_EVENTS_PREFIX + 2 * KILN_USER_MAX_LEN + 1 + KILN_ID_MAX_LEN + 1)
#define EVENTS_BATCH_BYTES (512 * 1024) /* an EventBatch stays well under max_payload */
#define EVENTS_KEY_MAX (KILN_ID_MAX_LEN + 48)

/* Writes "kiln.events.<hex(user)>.<id>" into buf (id: a job id, or the
 * EventBatch token). Returns its length, or 0 when user or id is empty or
 * too long for buflen. */
size_t events_subject(char *buf, size_t buflen, const char *user, const char *id);
/* Writes "kiln.events.<hex(user)>.$new" (the user's EventBatch subject). */
size_t events_new_subject(char *buf, size_t buflen, const char *user);

typedef enum {
    EVENTS_STATE = 0, /* new record, or state/attempts changed */
    EVENTS_VIEWED,    /* the viewed flag was set */
} events_kind;

/* Bounds an EventBatch's records to half the server's max_payload when that
 * is below EVENTS_BATCH_BYTES (call once, before publishing; <= 0 ignored). */
void events_set_max_payload(int64_t max_payload);

/* Writes the Kiln-Event-Key of a change into buf (EVENTS_KEY_MAX bytes). */
void events_key(char *buf, size_t buflen, const char *id, Kiln__V1__JobState state,
                  uint32_t attempts, events_kind kind);

typedef struct {
    char id[KILN_ID_MAX_LEN + 1];
    char subject[EVENTS_SUBJECT_MAX];
    char key[EVENTS_KEY_MAX];
    Kiln__V1__JobState state;
    uint32_t attempts;
    events_kind kind;
    bool fresh;   /* the record's first event: goes out in its user's EventBatch (subject) */
    bool recheck; /* a re-announcement: skipped if its subject's last event has this key */
    uint8_t *record_pb; /* packed JobRecord, malloc'ed */
    size_t record_len;
} events_item;

typedef struct {
    events_item *items;
    size_t n, cap;
} events_list;

/* Appends the change rec. *pb is the packed rec (malloc'ed): the list takes
 * it (and sets *pb NULL) on success; on failure the caller still owns it. */
kiln_status events_add_packed(events_list *l, const Kiln__V1__JobRecord *rec, events_kind kind,
                              uint8_t **pb, size_t len);
/* Packs rec and appends it as a re-announcement (recheck) of a replay. */
kiln_status events_add_replayed(events_list *l, const Kiln__V1__JobRecord *rec, events_kind kind);

/* Frees every item and empties the list (keeps the array). */
void events_reset(events_list *l);
/* Frees everything. NULL-safe. */
void events_free(events_list *l);

/* Publishes every item (first events batched per user, before the others)
 * with js_PublishMsgAsync; the caller waits for the acks (the apply loop
 * does with done_wait, together with jobs.done's). */
kiln_status events_publish_async(jsCtx *js, const events_list *l);
/* Publishes every item synchronously (request threads), each up to tries times. */
kiln_status events_publish_sync(jsCtx *js, const events_list *l, int tries);

#endif
