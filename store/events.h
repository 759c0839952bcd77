/* events.h - the store's feed of record changes for Server-Sent Events:
 * every state change it writes, as a JobRecord, on
 * kiln.events.<hex(user_id)>.<id> (stream KILN_EVENTS).
 *
 * The user part is the lower-case hex of the user id's bytes, so any user id
 * makes a valid subject token; the gateway subscribes to
 * kiln.events.<hex(user)>.> (all of a user's jobs) or
 * kiln.events.<hex(user)>.<id> (one job). Nats-Msg-Id is
 * "<id>.<state>.<attempts>.ev" ("<id>.viewed.<attempts>.ev" for the viewed
 * flag), so a change re-published on a replay is dropped by the stream. */
#ifndef STORE_EVENTS_H
#define STORE_EVENTS_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "jobreq.h"
#include "kiln.pb-c.h"
#include "status.h"
#include "subjects.h"

#define EVENTS_SUBJECT_MAX \
    (sizeof KILN_SUBJ_EVENTS_PREFIX + 2 * KILN_USER_MAX_LEN + 1 + KILN_ID_MAX_LEN + 1)
#define EVENTS_MSGID_MAX (KILN_ID_MAX_LEN + 48)

/* Writes "kiln.events.<hex(user)>.<id>" into buf. Returns its length, or 0
 * when user or id is empty or too long for buflen. */
size_t events_subject(char *buf, size_t buflen, const char *user, const char *id);

typedef enum {
    EVENTS_STATE = 0, /* new record, or state/attempts changed */
    EVENTS_VIEWED,    /* the viewed flag was set */
} events_kind;

/* Writes the Nats-Msg-Id of a change into buf (EVENTS_MSGID_MAX bytes). */
void events_msgid(char *buf, size_t buflen, const char *id, Kiln__V1__JobState state,
                  uint32_t attempts, events_kind kind);

typedef struct {
    char id[KILN_ID_MAX_LEN + 1];
    char subject[EVENTS_SUBJECT_MAX];
    char msgid[EVENTS_MSGID_MAX];
    Kiln__V1__JobState state;
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
/* Packs rec and appends it. */
kiln_status events_add(events_list *l, const Kiln__V1__JobRecord *rec, events_kind kind);

/* Frees every item and empties the list (keeps the array). */
void events_reset(events_list *l);
/* Frees everything. NULL-safe. */
void events_free(events_list *l);

/* Publishes every item with js_PublishMsgAsync; the caller waits for the acks
 * (done_publish_batch does, together with jobs.done). */
kiln_status events_publish_async(jsCtx *js, const events_list *l);
/* Publishes every item synchronously (request threads), each up to tries times. */
kiln_status events_publish_sync(jsCtx *js, const events_list *l, int tries);

#endif
