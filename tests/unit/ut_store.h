/* ut_store.h - reading a real store in unit tests: a per-user counter as
 * the store keeps it (DB_CF_COUNTERS, keys_counter). */
#ifndef KILN_UT_STORE_H
#define KILN_UT_STORE_H

#include <criterion/criterion.h>
#include <stdint.h>

#include "../../store/db.h"
#include "../../store/keys.h"

/* The counter's value (0 when absent); cr_asserts the read. */
static inline uint64_t ut_store_counter(db_store *db, const char *user, keys_counter_kind kind)
{
    uint8_t k[KEYS_MAX];
    uint64_t v = 0;
    size_t kl = keys_counter(k, user, kind);
    cr_assert_eq(db_get_u64(db, NULL, DB_CF_COUNTERS, k, kl, &v), KILN_OK);
    return v;
}

#endif
