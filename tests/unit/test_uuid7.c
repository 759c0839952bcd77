/* test_uuid7.c - unit tests for common/uuid7.c: format, ordering, thread safety. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "uuid7.h"

#define UUID_N 10000

static void check_format(const char *s)
{
    cr_assert_eq(strlen(s), KILN_UUID_STRLEN, "bad length: %s", s);
    for (int i = 0; i < KILN_UUID_STRLEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            cr_assert_eq(s[i], '-', "no hyphen at %d: %s", i, s);
        } else {
            cr_assert(strchr("0123456789abcdef", s[i]) != NULL && s[i] != '\0',
                      "not lower-case hex at %d: %s", i, s);
        }
    }
    cr_assert_eq(s[14], '7', "version nibble: %s", s);
    cr_assert(strchr("89ab", s[19]) != NULL, "variant nibble: %s", s);
}

Test(uuid7, format_and_embedded_time)
{
    char id[KILN_UUID_STRLEN + 1];
    int64_t before = kiln_now_ms();
    cr_assert_eq(kiln_uuid7(id), KILN_OK);
    int64_t after = kiln_now_ms();
    check_format(id);
    int64_t t = kiln_uuid7_time_ms(id);
    cr_assert(t >= before && t <= after, "t=%lld not in [%lld,%lld]", (long long)t,
              (long long)before, (long long)after);
}

Test(uuid7, strictly_increasing_over_10000)
{
    char (*ids)[KILN_UUID_STRLEN + 1] = malloc(sizeof *ids * UUID_N);
    cr_assert_not_null(ids);
    for (int i = 0; i < UUID_N; i++) cr_assert_eq(kiln_uuid7(ids[i]), KILN_OK);
    for (int i = 0; i < UUID_N; i++) {
        check_format(ids[i]);
        if (i > 0)
            cr_assert(strcmp(ids[i - 1], ids[i]) < 0, "not increasing at %d: %s then %s", i,
                      ids[i - 1], ids[i]);
        if (i > 0) cr_assert(kiln_uuid7_time_ms(ids[i - 1]) <= kiln_uuid7_time_ms(ids[i]));
    }
    free(ids);
}

typedef struct {
    char (*ids)[KILN_UUID_STRLEN + 1];
    int n;
    int ok;
} gen_arg;

static void *gen_thread(void *p)
{
    gen_arg *a = p;
    a->ok = 1;
    for (int i = 0; i < a->n; i++) {
        if (kiln_uuid7(a->ids[i]) != KILN_OK) a->ok = 0;
        if (i > 0 && strcmp(a->ids[i - 1], a->ids[i]) >= 0) a->ok = 0;
    }
    return NULL;
}

static int cmp_ids(const void *a, const void *b) { return strcmp(a, b); }

Test(uuid7, unique_and_ordered_across_threads)
{
    enum { T = 4, PER = 2500 };
    char (*ids)[KILN_UUID_STRLEN + 1] = malloc(sizeof *ids * T * PER);
    cr_assert_not_null(ids);
    pthread_t th[T];
    gen_arg args[T];
    for (int t = 0; t < T; t++) {
        args[t] = (gen_arg){.ids = ids + t * PER, .n = PER, .ok = 0};
        cr_assert_eq(pthread_create(&th[t], NULL, gen_thread, &args[t]), 0);
    }
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        cr_assert(args[t].ok, "thread %d saw a non-increasing id", t);
    }
    qsort(ids, T * PER, sizeof *ids, cmp_ids);
    for (int i = 1; i < T * PER; i++) cr_assert(strcmp(ids[i - 1], ids[i]) != 0, "duplicate id");
    free(ids);
}

Test(uuid7, time_ms_rejects_non_v7)
{
    cr_assert_eq(kiln_uuid7_time_ms(NULL), -1);
    cr_assert_eq(kiln_uuid7_time_ms(""), -1);
    cr_assert_eq(kiln_uuid7_time_ms("not-a-uuid"), -1);
    /* A v4 UUID. */
    cr_assert_eq(kiln_uuid7_time_ms("0b0e3c5a-2f4e-4d2a-9c1b-7e8f9a0b1c2d"), -1);
    /* Right version, wrong variant. */
    cr_assert_eq(kiln_uuid7_time_ms("0190f0e0-1234-7abc-cdef-0123456789ab"), -1);
    /* Hyphen misplaced, non-hex, too long. */
    cr_assert_eq(kiln_uuid7_time_ms("0190f0e01-234-7abc-8def-0123456789ab"), -1);
    cr_assert_eq(kiln_uuid7_time_ms("0190f0e0-1234-7abc-8def-0123456789ag"), -1);
    cr_assert_eq(kiln_uuid7_time_ms("0190f0e0-1234-7abc-8def-0123456789abc"), -1);
    /* A valid one: first 48 bits are the ms. */
    cr_assert_eq(kiln_uuid7_time_ms("0190f0e0-1234-7abc-8def-0123456789ab"), 0x0190f0e01234LL);
}
