/* test_store_keys.c - unit tests for the store's byte layouts: index keys
 * (newest first, per-user ranges), list cursors, idem keys and values, and
 * event subjects. */
#include <criterion/criterion.h>
#include <string.h>

#include "../../store/events.h"
#include "../../store/idem.h"
#include "../../store/keys.h"

/* memcmp order of two keys, like RocksDB's default comparator. */
static int key_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c != 0) return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

Test(store_keys, by_user_newest_first)
{
    uint8_t a[KEYS_MAX], b[KEYS_MAX];
    size_t al = keys_by_user(a, "alice", 2000, "job-a");
    size_t bl = keys_by_user(b, "alice", 1000, "job-b");
    cr_assert_gt(al, 0);
    cr_assert_gt(bl, 0);
    cr_assert_lt(key_cmp(a, al, b, bl), 0, "the newer job sorts first");
}

Test(store_keys, same_millisecond_larger_id_first)
{
    /* UUIDv7 ids made later compare larger: they must list first. */
    uint8_t a[KEYS_MAX], b[KEYS_MAX];
    size_t al = keys_by_user(a, "alice", 1000, "0190aaaa-0002");
    size_t bl = keys_by_user(b, "alice", 1000, "0190aaaa-0001");
    cr_assert_lt(key_cmp(a, al, b, bl), 0);
    /* A prefix id ("ab" vs "abc") still orders deterministically. */
    al = keys_by_user(a, "alice", 1000, "abc");
    bl = keys_by_user(b, "alice", 1000, "ab");
    cr_assert_neq(key_cmp(a, al, b, bl), 0);
}

Test(store_keys, users_do_not_share_a_range)
{
    uint8_t p[KEYS_MAX], k[KEYS_MAX];
    size_t pl = keys_user_prefix(p, "ab");
    size_t kl = keys_by_user(k, "abc", 1000, "x");
    cr_assert_eq(pl, 3);
    /* The length byte keeps user "abc" out of user "ab"'s prefix. */
    cr_assert(kl < pl || memcmp(k, p, pl) != 0);
    kl = keys_by_user(k, "ab", 1000, "x");
    cr_assert_eq(memcmp(k, p, pl), 0);
}

Test(store_keys, by_user_state_prefix_and_order)
{
    uint8_t p[KEYS_MAX], a[KEYS_MAX], b[KEYS_MAX], c[KEYS_MAX];
    size_t pl = keys_user_state_prefix(p, "u", KILN__V1__JOB_STATE__JOB_STATE_PENDING);
    size_t al = keys_by_user_state(a, "u", KILN__V1__JOB_STATE__JOB_STATE_PENDING, 5, "a");
    size_t bl = keys_by_user_state(b, "u", KILN__V1__JOB_STATE__JOB_STATE_PENDING, 4, "b");
    size_t cl = keys_by_user_state(c, "u", KILN__V1__JOB_STATE__JOB_STATE_FAILED, 9, "c");
    cr_assert_eq(memcmp(a, p, pl), 0);
    cr_assert_eq(memcmp(b, p, pl), 0);
    cr_assert_neq(memcmp(c, p, pl), 0, "another state is outside the prefix");
    cr_assert_lt(key_cmp(a, al, b, bl), 0);
    (void)cl;
}

Test(store_keys, index_id_extracts_the_id)
{
    uint8_t k[KEYS_MAX];
    char id[KILN_ID_MAX_LEN + 1];
    size_t kl = keys_by_user(k, "alice", 123456789, "Job_42-x");
    cr_assert_eq(keys_index_id(k, kl, keys_user_prefix((uint8_t[KEYS_MAX]){0}, "alice"), id,
                               sizeof id),
                 KILN_OK);
    cr_assert_str_eq(id, "Job_42-x");
    cr_assert_eq(keys_index_id(k, 6 + 8, 6, id, sizeof id), KILN_EINVAL, "no id bytes");
}

Test(store_keys, cursor_round_trip)
{
    uint8_t k[KEYS_MAX], back[KEYS_MAX];
    char hex[KEYS_CURSOR_MAX_HEX + 1];
    size_t kl = keys_by_user_state(k, "üser", KILN__V1__JOB_STATE__JOB_STATE_COMPLETED,
                                   1795503882123LL, "0190-abc");
    keys_hex_encode(k, kl, hex);
    cr_assert_eq(strlen(hex), 2 * kl);
    for (const char *p = hex; *p; p++) cr_assert(strchr("0123456789abcdef", *p) != NULL);
    size_t bl = 0;
    cr_assert_eq(keys_hex_decode(hex, back, &bl), KILN_OK);
    cr_assert_eq(bl, kl);
    cr_assert_eq(memcmp(back, k, kl), 0);
}

Test(store_keys, cursor_rejects_garbage)
{
    uint8_t buf[KEYS_MAX];
    size_t n = 0;
    char big[KEYS_CURSOR_MAX_HEX + 3];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_assert_eq(keys_hex_decode("", buf, &n), KILN_EINVAL);
    cr_assert_eq(keys_hex_decode("abc", buf, &n), KILN_EINVAL);
    cr_assert_eq(keys_hex_decode("zz", buf, &n), KILN_EINVAL);
    cr_assert_eq(keys_hex_decode(big, buf, &n), KILN_EINVAL);
    cr_assert_eq(keys_hex_decode("0aFF", buf, &n), KILN_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(buf[1], 0xff);
}

Test(store_keys, too_long_inputs_are_refused)
{
    uint8_t k[KEYS_IDEM_MAX];
    char user[KILN_USER_MAX_LEN + 2], id[KILN_ID_MAX_LEN + 2], key[KILN_IDEM_KEY_MAX_LEN + 2];
    memset(user, 'u', sizeof user - 1);
    user[sizeof user - 1] = '\0';
    memset(id, 'i', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    cr_assert_eq(keys_by_user(k, user, 1, "x"), 0);
    cr_assert_eq(keys_by_user(k, "u", 1, id), 0);
    cr_assert_eq(keys_by_user(k, "", 1, "x"), 0);
    cr_assert_eq(keys_idem(k, "u", key), 0);
    user[KILN_USER_MAX_LEN] = '\0';
    key[KILN_IDEM_KEY_MAX_LEN] = '\0';
    cr_assert_eq(keys_idem(k, user, key), KEYS_IDEM_MAX, "the longest user and key fit");
}

Test(store_keys, idem_key_layout)
{
    uint8_t k[KEYS_IDEM_MAX];
    size_t n = keys_idem(k, "bob", "K1");
    cr_assert_eq(n, 1 + 3 + 2);
    cr_assert_eq(k[0], 3);
    cr_assert_eq(memcmp(k + 1, "bobK1", 5), 0);
}

Test(store_keys, idem_value_round_trip)
{
    uint8_t v[IDEM_VALUE_MAX], hash[IDEM_HASH_LEN], back[IDEM_HASH_LEN];
    char id[KILN_ID_MAX_LEN + 1];
    int64_t created = 0;
    for (int i = 0; i < IDEM_HASH_LEN; i++) hash[i] = (uint8_t)i;
    size_t n = idem_value_encode(v, 1795503882123LL, "job-7", hash);
    cr_assert_eq(n, 8 + 1 + 5 + 32);
    cr_assert_eq(idem_value_decode(v, n, &created, id, back), KILN_OK);
    cr_assert_eq(created, 1795503882123LL);
    cr_assert_str_eq(id, "job-7");
    cr_assert_eq(memcmp(back, hash, sizeof hash), 0);
    cr_assert_eq(idem_value_decode(v, n - 1, &created, id, back), KILN_EINVAL);
    v[8] = 0;
    cr_assert_eq(idem_value_decode(v, n, &created, id, back), KILN_EINVAL);
    cr_assert_eq(idem_value_encode(v, 1, "", hash), 0);
}

Test(store_keys, idem_expiry)
{
    int64_t day = 24LL * 3600 * 1000;
    cr_assert_not(idem_expired(1000, 1000 + day - 1, day));
    cr_assert(idem_expired(1000, 1000 + day, day));
}

Test(store_keys, event_subject_is_lower_hex_user_then_id)
{
    char s[EVENTS_SUBJECT_MAX];
    size_t n = events_subject(s, sizeof s, "Al.ice", "job-1");
    cr_assert_str_eq(s, "kiln.events.416c2e696365.job-1");
    cr_assert_eq(n, strlen(s));
    cr_assert_eq(events_subject(s, 10, "alice", "job-1"), 0, "too small a buffer");
    cr_assert_eq(events_subject(s, sizeof s, "", "job-1"), 0);
    char user[KILN_USER_MAX_LEN + 1], id[KILN_ID_MAX_LEN + 1];
    memset(user, 0xff, KILN_USER_MAX_LEN);
    user[KILN_USER_MAX_LEN] = '\0';
    memset(id, 'z', KILN_ID_MAX_LEN);
    id[KILN_ID_MAX_LEN] = '\0';
    cr_assert_gt(events_subject(s, sizeof s, user, id), 0, "the longest user and id fit");
}

Test(store_keys, event_key)
{
    char m[EVENTS_KEY_MAX];
    events_key(m, sizeof m, "job-1", KILN__V1__JOB_STATE__JOB_STATE_PROCESSING, 2, EVENTS_STATE);
    cr_assert_str_eq(m, "job-1.processing.2.ev");
    events_key(m, sizeof m, "job-1", KILN__V1__JOB_STATE__JOB_STATE_COMPLETED, 2, EVENTS_VIEWED);
    cr_assert_str_eq(m, "job-1.viewed.2.ev");
}
