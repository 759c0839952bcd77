/* test_store_batch.c - db_batch (store/batch.c): a batch reads its own
 * writes, and a cleared batch forgets everything, also when a large batch
 * grew its table and small ones follow (the clear then visits only the
 * slots it used). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../../store/db.h"

static void key_of(char *buf, size_t len, int round, int i)
{
    snprintf(buf, len, "r%d-key-%d", round, i);
}

/* Stages n keys of round r (every third one a delete) in b. */
static void stage(db_batch *b, int r, int n)
{
    char k[64], v[64];
    for (int i = 0; i < n; i++) {
        key_of(k, sizeof k, r, i);
        snprintf(v, sizeof v, "v%d", i);
        if (i % 3 == 2) db_batch_delete(b, (db_cf)(i % 4), k, strlen(k));
        else db_batch_put(b, (db_cf)(i % 4), k, strlen(k), v, strlen(v) + 1);
    }
}

/* Every key of round r is found as staged (present=1) or not at all (0). */
static void expect_round(const db_batch *b, int r, int n, int present)
{
    char k[64], v[64];
    for (int i = 0; i < n; i++) {
        const char *val = NULL;
        size_t vlen = 0;
        key_of(k, sizeof k, r, i);
        int found = db_batch_find(b, (db_cf)(i % 4), k, strlen(k), &val, &vlen);
        if (!present) {
            cr_assert_eq(found, 0, "round %d key %d is still in the cleared batch", r, i);
        } else if (i % 3 == 2) {
            cr_assert_eq(found, -1, "round %d key %d: want its delete, got %d", r, i, found);
        } else {
            snprintf(v, sizeof v, "v%d", i);
            cr_assert_eq(found, 1, "round %d key %d not found", r, i);
            cr_assert_str_eq(val, v);
        }
    }
}

Test(store_batch, small_batches_after_a_large_one_forget_everything)
{
    db_batch *b = NULL;
    cr_assert_eq(db_batch_create(&b), KILN_OK);
    /* sizes: a large batch grows the table; small ones are cleared slot by
     * slot; a batch at the threshold and an empty one in between. */
    static const int sizes[] = {20000, 3, 1, 40, 2, 0, 5000, 7, 2600, 1, 0, 1};
    const int nsizes = (int)(sizeof sizes / sizeof sizes[0]);
    for (int r = 0; r < nsizes; r++) {
        stage(b, r, sizes[r]);
        expect_round(b, r, sizes[r], 1);
        /* Keys of the previous round, cleared before this one, are gone. */
        if (r > 0) expect_round(b, r - 1, sizes[r - 1], 0);
        db_batch_clear(b);
        expect_round(b, r, sizes[r], 0);
    }
    db_batch_destroy(b);
}

Test(store_batch, a_key_staged_twice_keeps_its_last_operation)
{
    db_batch *b = NULL;
    cr_assert_eq(db_batch_create(&b), KILN_OK);
    stage(b, 0, 10000);
    db_batch_clear(b);
    db_batch_put(b, DB_CF_JOBS, "k", 1, "a", 2);
    db_batch_put(b, DB_CF_JOBS, "k", 1, "b", 2);
    const char *val = NULL;
    size_t vlen = 0;
    cr_assert_eq(db_batch_find(b, DB_CF_JOBS, "k", 1, &val, &vlen), 1);
    cr_assert_str_eq(val, "b");
    db_batch_delete(b, DB_CF_JOBS, "k", 1);
    cr_assert_eq(db_batch_find(b, DB_CF_JOBS, "k", 1, &val, &vlen), -1);
    cr_assert_eq(db_batch_find(b, DB_CF_BY_USER, "k", 1, &val, &vlen), 0, "another family");
    db_batch_clear(b);
    cr_assert_eq(db_batch_find(b, DB_CF_JOBS, "k", 1, &val, &vlen), 0);
    db_batch_destroy(b);
}
