/* pb.c - protobuf-c helpers: pack into a malloc'ed buffer, state and priority names. */
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "subjects.h"

kiln_status kiln_pb_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len)
{
    if (m == NULL || buf == NULL || len == NULL) return KILN_EINVAL;
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > KILN_PB_MAX_BYTES) return KILN_EINVAL;
    /* malloc(0) may return NULL; an empty message is still a valid buffer. */
    uint8_t *b = malloc(n > 0 ? n : 1);
    if (b == NULL) return KILN_ENOMEM;
    size_t w = protobuf_c_message_pack(m, b);
    if (w != n) {
        free(b);
        return KILN_ERR;
    }
    *buf = b;
    *len = n;
    return KILN_OK;
}

void kiln_pb_drop_unknown(ProtobufCMessage *m)
{
    if (m == NULL) return;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        /* Kiln's messages have no oneof, whose member may hold another type. */
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) continue;
        char *member = (char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            ProtobufCMessage **items = *(ProtobufCMessage ***)(void *)member;
            for (size_t k = 0; k < n; k++) kiln_pb_drop_unknown(items[k]);
        } else {
            kiln_pb_drop_unknown(*(ProtobufCMessage **)(void *)member);
        }
    }
    /* Unpacked with the default allocator; free_unpacked() frees the array. */
    for (unsigned i = 0; i < m->n_unknown_fields; i++) free(m->unknown_fields[i].data);
    m->n_unknown_fields = 0;
}

static const struct {
    Kiln__V1__JobState state;
    const char *name;
} pb_states[] = {
    {KILN__V1__JOB_STATE__JOB_STATE_PENDING, "pending"},
    {KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, "processing"},
    {KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, "completed"},
    {KILN__V1__JOB_STATE__JOB_STATE_FAILED, "failed"},
    {KILN__V1__JOB_STATE__JOB_STATE_CANCELLED, "cancelled"},
};

const char *kiln_state_name(Kiln__V1__JobState s)
{
    for (size_t i = 0; i < sizeof pb_states / sizeof pb_states[0]; i++)
        if (pb_states[i].state == s) return pb_states[i].name;
    return "unspecified";
}

kiln_status kiln_state_parse(const char *name, Kiln__V1__JobState *out)
{
    if (name == NULL || out == NULL) return KILN_EINVAL;
    for (size_t i = 0; i < sizeof pb_states / sizeof pb_states[0]; i++) {
        if (strcmp(pb_states[i].name, name) == 0) {
            *out = pb_states[i].state;
            return KILN_OK;
        }
    }
    return KILN_EINVAL;
}

int kiln_state_is_terminal(Kiln__V1__JobState s)
{
    return s == KILN__V1__JOB_STATE__JOB_STATE_COMPLETED ||
           s == KILN__V1__JOB_STATE__JOB_STATE_FAILED ||
           s == KILN__V1__JOB_STATE__JOB_STATE_CANCELLED;
}

const char *kiln_priority_name(Kiln__V1__Priority p)
{
    switch (p) {
    case KILN__V1__PRIORITY__PRIORITY_HIGH: return "high";
    case KILN__V1__PRIORITY__PRIORITY_LOW: return "low";
    default: return "normal";
    }
}

kiln_status kiln_priority_parse(const char *name, Kiln__V1__Priority *out)
{
    if (name == NULL || out == NULL) return KILN_EINVAL;
    if (strcmp(name, "high") == 0) *out = KILN__V1__PRIORITY__PRIORITY_HIGH;
    else if (strcmp(name, "normal") == 0) *out = KILN__V1__PRIORITY__PRIORITY_NORMAL;
    else if (strcmp(name, "low") == 0) *out = KILN__V1__PRIORITY__PRIORITY_LOW;
    else return KILN_EINVAL;
    return KILN_OK;
}

const char *kiln_priority_subject(Kiln__V1__Priority p)
{
    switch (p) {
    case KILN__V1__PRIORITY__PRIORITY_HIGH: return KILN_SUBJ_GENERATE_HIGH;
    case KILN__V1__PRIORITY__PRIORITY_LOW: return KILN_SUBJ_GENERATE_LOW;
    default: return KILN_SUBJ_GENERATE;
    }
}

bool kiln_subject_priority(const char *subject, Kiln__V1__Priority *out)
{
    if (subject == NULL) return false;
    if (strcmp(subject, KILN_SUBJ_GENERATE_HIGH) == 0) *out = KILN__V1__PRIORITY__PRIORITY_HIGH;
    else if (strcmp(subject, KILN_SUBJ_GENERATE) == 0) *out = KILN__V1__PRIORITY__PRIORITY_NORMAL;
    else if (strcmp(subject, KILN_SUBJ_GENERATE_LOW) == 0) *out = KILN__V1__PRIORITY__PRIORITY_LOW;
    else return false;
    return true;
}
