/* test_sha256.c - unit tests for common/sha256.c: FIPS 180-2 vectors, and
 * first use from several threads at once (the algorithm is fetched once). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sha256.h"

static void hex(const uint8_t d[KILN_SHA256_LEN], char out[2 * KILN_SHA256_LEN + 1])
{
    for (int i = 0; i < KILN_SHA256_LEN; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static const char *sha256_hex(const char *s, char out[2 * KILN_SHA256_LEN + 1])
{
    uint8_t d[KILN_SHA256_LEN];
    cr_assert_eq(kiln_sha256(s, strlen(s), d), KILN_OK);
    hex(d, out);
    return out;
}

Test(sha256, known_vectors)
{
    char h[2 * KILN_SHA256_LEN + 1];
    cr_assert_str_eq(sha256_hex("", h),
                     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    cr_assert_str_eq(sha256_hex("abc", h),
                     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_str_eq(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", h),
                     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    uint8_t d[KILN_SHA256_LEN];
    cr_assert_eq(kiln_sha256(NULL, 1, d), KILN_EINVAL);
}

static void *hash_abc(void *arg)
{
    uint8_t *d = arg;
    return kiln_sha256("abc", 3, d) == KILN_OK ? d : NULL;
}

Test(sha256, first_use_from_several_threads)
{
    enum { N = 8 };
    pthread_t t[N];
    uint8_t d[N][KILN_SHA256_LEN];
    for (int i = 0; i < N; i++) cr_assert_eq(pthread_create(&t[i], NULL, hash_abc, d[i]), 0);
    for (int i = 0; i < N; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        cr_assert_not_null(r, "thread %d failed", i);
        char h[2 * KILN_SHA256_LEN + 1];
        hex(d[i], h);
        cr_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
