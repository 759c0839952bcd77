/* keys.c - the byte layout of the store's index keys and list cursors.
 *
 * Index keys sort newest first: the creation time is stored inverted (~ms,
 * big-endian) and so is the id (each byte ~b), so that two jobs created in
 * the same millisecond still list newest first (UUIDv7 ids grow with time).
 * Ids are [A-Za-z0-9_-] so the inversion is lossless and never yields 0. */
#include <string.h>

#include "jobreq.h"
#include "keys.h"

void keys_put_be64(uint8_t *buf, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        buf[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

uint64_t keys_get_be64(const uint8_t *buf)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | buf[i];
    return v;
}

size_t keys_user_prefix(uint8_t *buf, const char *user)
{
    size_t ulen = strlen(user);
    if (ulen == 0 || ulen > KILN_USER_MAX_LEN) return 0;
    buf[0] = (uint8_t)ulen;
    memcpy(buf + 1, user, ulen);
    return 1 + ulen;
}

size_t keys_user_state_prefix(uint8_t *buf, const char *user, Kiln__V1__JobState state)
{
    size_t n = keys_user_prefix(buf, user);
    if (n == 0) return 0;
    buf[n++] = (uint8_t)state;
    return n;
}

/* Appends [be64 ~created][~id] at buf+n. */
static size_t keys_append_time_id(uint8_t *buf, size_t n, int64_t created_at_ms, const char *id)
{
    size_t idlen = strlen(id);
    if (idlen == 0 || idlen > KILN_ID_MAX_LEN || n + 8 + idlen > KEYS_MAX) return 0;
    keys_put_be64(buf + n, ~(uint64_t)created_at_ms);
    n += 8;
    for (size_t i = 0; i < idlen; i++) buf[n + i] = (uint8_t)~(uint8_t)id[i];
    return n + idlen;
}

size_t keys_by_user(uint8_t *buf, const char *user, int64_t created_at_ms, const char *id)
{
    size_t n = keys_user_prefix(buf, user);
    if (n == 0) return 0;
    return keys_append_time_id(buf, n, created_at_ms, id);
}

size_t keys_by_user_state(uint8_t *buf, const char *user, Kiln__V1__JobState state,
                          int64_t created_at_ms, const char *id)
{
    size_t n = keys_user_state_prefix(buf, user, state);
    if (n == 0) return 0;
    return keys_append_time_id(buf, n, created_at_ms, id);
}

size_t keys_counter(uint8_t *buf, const char *user, keys_counter_kind kind)
{
    size_t n = keys_user_prefix(buf, user);
    if (n == 0) return 0;
    buf[n++] = (uint8_t)kind;
    return n;
}

size_t keys_finished(uint8_t *buf, int64_t basis_ms, const char *id)
{
    size_t idlen = strlen(id);
    if (idlen == 0 || idlen > KILN_ID_MAX_LEN) return 0;
    keys_put_be64(buf, basis_ms > 0 ? (uint64_t)basis_ms : 0);
    memcpy(buf + 8, id, idlen);
    return 8 + idlen;
}

size_t keys_idem(uint8_t *buf, const char *user, const char *key)
{
    size_t n = keys_user_prefix(buf, user);
    size_t kl = strlen(key);
    if (n == 0 || kl == 0 || kl > KILN_IDEM_KEY_MAX_LEN || n + kl > KEYS_IDEM_MAX) return 0;
    memcpy(buf + n, key, kl);
    return n + kl;
}

kiln_status keys_index_id(const uint8_t *key, size_t klen, size_t prefix_len, char *id,
                          size_t idlen)
{
    if (klen <= prefix_len + 8) return KILN_EINVAL;
    size_t n = klen - prefix_len - 8;
    if (n > KILN_ID_MAX_LEN || n + 1 > idlen) return KILN_EINVAL;
    const uint8_t *p = key + prefix_len + 8;
    for (size_t i = 0; i < n; i++) id[i] = (char)(uint8_t)~p[i];
    id[n] = '\0';
    return KILN_OK;
}

void keys_hex_encode(const uint8_t *key, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[key[i] >> 4];
        out[2 * i + 1] = digits[key[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

static int keys_hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

kiln_status keys_hex_decode(const char *hex, uint8_t *buf, size_t *len)
{
    size_t hlen = strnlen(hex, KEYS_CURSOR_MAX_HEX + 1);
    if (hlen == 0 || hlen > KEYS_CURSOR_MAX_HEX || hlen % 2 != 0) return KILN_EINVAL;
    for (size_t i = 0; i < hlen / 2; i++) {
        int hi = keys_hex_digit(hex[2 * i]);
        int lo = keys_hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return KILN_EINVAL;
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = hlen / 2;
    return KILN_OK;
}
