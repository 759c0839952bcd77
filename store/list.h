/* list.h - one page of a user's jobs from an index column family. */
#ifndef STORE_LIST_H
#define STORE_LIST_H

#include "db.h"
#include "kiln.pb-c.h"
#include "status.h"

#define LIST_LIMIT_DEFAULT 50
#define LIST_LIMIT_MAX 200
#define LIST_SCAN_MAX 1000 /* index entries read per page at most */

typedef struct {
    Kiln__V1__JobRecord **jobs; /* n unpacked records (owned) */
    size_t n;
    char next_cursor[2 * 256 + 1]; /* "" when there is no next page */
    uint64_t active_count, unviewed_count;
} list_page;

/* Fills page for req (user_id required, limit, state, unviewed, cursor).
 * KILN_EINVAL on a bad cursor, state or user (err names it). The page is
 * read from one snapshot; cost is O(limit), not O(jobs). */
kiln_status list_read(db_store *db, const Kiln__V1__StoreRequest *req, list_page *page,
                      const char **err);
void list_page_free(list_page *page);

#endif
