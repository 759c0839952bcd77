/* pb.h - protobuf-c helpers: pack into a malloc'ed buffer, unpack with a size
 * cap, state names. */
#ifndef KILN_PB_H
#define KILN_PB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

#define KILN_PB_MAX_BYTES (1024 * 1024) /* largest protobuf payload Kiln accepts */

/* Packs m into a new buffer owned by the caller (free()). */
kiln_status kiln_pb_pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len);

/* Forgets the fields of m (and of every message in it) that Kiln's schema
 * does not know. Call it on a message decoded from outside input before any
 * part of it is packed again: protobuf-c 1.4.1 keeps such fields and writes
 * them back, and one it accepted (field 0 in a two-byte tag) it then
 * writes in a form its own parser refuses, so a record or transition that
 * carried it would no longer decode. m must come from a ..._unpack(NULL, ...). */
void kiln_pb_drop_unknown(ProtobufCMessage *m);

/* "pending", "processing", "completed", "failed", "cancelled", or "unspecified". */
const char *kiln_state_name(Kiln__V1__JobState s);
/* Parses the names above; returns KILN_EINVAL for anything else. */
kiln_status kiln_state_parse(const char *name, Kiln__V1__JobState *out);
int kiln_state_is_terminal(Kiln__V1__JobState s);

/* "high", "normal", "low". */
const char *kiln_priority_name(Kiln__V1__Priority p);
kiln_status kiln_priority_parse(const char *name, Kiln__V1__Priority *out);
/* The jobs.generate* subject for a priority. */
const char *kiln_priority_subject(Kiln__V1__Priority p);
/* The priority of a jobs.generate* lane subject; false for any other subject. */
bool kiln_subject_priority(const char *subject, Kiln__V1__Priority *out);

#endif
