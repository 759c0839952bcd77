/* keys.h - the byte layout of the store's index keys and list cursors. */
#ifndef STORE_KEYS_H
#define STORE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

/* [u8 len][user ≤128][u8 state][be64][id ≤64] plus slack. */
#define KEYS_MAX 256
#define KEYS_CURSOR_MAX_HEX (2 * KEYS_MAX)
/* idem: [u8 len][user ≤128][key ≤128]. */
#define KEYS_IDEM_MAX (1 + 128 + 128)

typedef enum { KEYS_COUNTER_ACTIVE = 1, KEYS_COUNTER_UNVIEWED = 2 } keys_counter_kind;

/* Each writer returns the key length, or 0 when an input is too long. */

/* [u8 len][user] - the prefix of every by_user / unviewed key of a user. */
size_t keys_user_prefix(uint8_t *buf, const char *user);
/* [u8 len][user][u8 state] - prefix of a user's by_user_state keys. */
size_t keys_user_state_prefix(uint8_t *buf, const char *user, Kiln__V1__JobState state);
/* by_user and unviewed: [u8 len][user][be64 ~created_at_ms][~id]. */
size_t keys_by_user(uint8_t *buf, const char *user, int64_t created_at_ms, const char *id);
/* by_user_state: [u8 len][user][u8 state][be64 ~created_at_ms][~id]. */
size_t keys_by_user_state(uint8_t *buf, const char *user, Kiln__V1__JobState state,
                          int64_t created_at_ms, const char *id);
/* counters: [u8 len][user][u8 kind]. */
size_t keys_counter(uint8_t *buf, const char *user, keys_counter_kind kind);

/* finished: [be64 expiry basis ms][id] - oldest first (store/retention.c).
 * The basis is the job's completed_at_ms, or later while an
 * Idempotency-Key must keep the record. */
size_t keys_finished(uint8_t *buf, int64_t basis_ms, const char *id);

/* idem: [u8 len][user][idempotency key] (buf: KEYS_IDEM_MAX bytes). */
size_t keys_idem(uint8_t *buf, const char *user, const char *key);

/* Extracts the job id from an index key whose prefix is prefix_len bytes long.
 * id must hold KILN_ID_MAX_LEN + 1 bytes. KILN_EINVAL on a malformed key. */
kiln_status keys_index_id(const uint8_t *key, size_t klen, size_t prefix_len, char *id,
                          size_t idlen);

/* be64 helpers for counter values and meta entries. */
void keys_put_be64(uint8_t *buf, uint64_t v);
uint64_t keys_get_be64(const uint8_t *buf);

/* Lower-case hex of key into out (2*len+1 bytes). */
void keys_hex_encode(const uint8_t *key, size_t len, char *out);
/* Decodes hex (at most KEYS_CURSOR_MAX_HEX chars) into buf (KEYS_MAX bytes).
 * KILN_EINVAL on odd length, bad digits or too long. */
kiln_status keys_hex_decode(const char *hex, uint8_t *buf, size_t *len);

#endif
