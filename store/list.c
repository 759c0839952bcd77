/* list.c - one page of a user's jobs, newest first, from an index CF.
 *
 * by_user for all jobs, by_user_state with a state filter, unviewed with
 * unviewed=true (a state filter is then checked on each record). The cursor
 * is the hex of the last index key returned; the next page seeks to it. */
#include <stdlib.h>
#include <string.h>

#include "jobreq.h"
#include "keys.h"
#include "list.h"
#include "pb.h"

void list_page_free(list_page *page)
{
    if (page == NULL) return;
    for (size_t i = 0; i < page->n; i++) kiln__v1__job_record__free_unpacked(page->jobs[i], NULL);
    free(page->jobs);
    page->jobs = NULL;
    page->n = 0;
}

static kiln_status list_counters(db_store *db, const rocksdb_readoptions_t *ro, const char *user,
                                 list_page *page)
{
    uint8_t key[KEYS_MAX];
    char *v = NULL;
    size_t n = 0;
    uint64_t *dst[2] = {&page->active_count, &page->unviewed_count};
    keys_counter_kind kinds[2] = {KEYS_COUNTER_ACTIVE, KEYS_COUNTER_UNVIEWED};
    for (int i = 0; i < 2; i++) {
        size_t klen = keys_counter(key, user, kinds[i]);
        kiln_status st = db_get(db, ro, NULL, DB_CF_COUNTERS, key, klen, &v, &n);
        if (st == KILN_ENOTFOUND) {
            *dst[i] = 0;
            continue;
        }
        if (st != KILN_OK) return st;
        *dst[i] = n == 8 ? keys_get_be64((const uint8_t *)v) : 0;
        rocksdb_free(v);
        v = NULL;
    }
    return KILN_OK;
}

kiln_status list_read(db_store *db, const Kiln__V1__StoreRequest *req, list_page *page,
                      const char **err)
{
    kiln_status st = KILN_OK;
    uint8_t prefix[KEYS_MAX], cursor[KEYS_MAX];
    size_t plen = 0, clen = 0;
    db_cf cf = DB_CF_BY_USER;
    const char *user = req->user_id;
    int state_filter = req->state != KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
    const rocksdb_snapshot_t *snap = NULL;
    rocksdb_readoptions_t *ro = NULL;
    rocksdb_iterator_t *it = NULL;

    memset(page, 0, sizeof *page);
    if (user == NULL || user[0] == '\0' || strlen(user) > KILN_USER_MAX_LEN) {
        *err = "user_id";
        return KILN_EINVAL;
    }
    if (state_filter && strcmp(kiln_state_name(req->state), "unspecified") == 0) {
        *err = "state";
        return KILN_EINVAL;
    }
    unsigned limit = req->limit == 0 ? LIST_LIMIT_DEFAULT : req->limit;
    if (limit > LIST_LIMIT_MAX) limit = LIST_LIMIT_MAX;

    if (req->unviewed) {
        cf = DB_CF_UNVIEWED;
        plen = keys_user_prefix(prefix, user);
    } else if (state_filter) {
        cf = DB_CF_BY_USER_STATE;
        plen = keys_user_state_prefix(prefix, user, req->state);
    } else {
        plen = keys_user_prefix(prefix, user);
    }
    if (req->cursor != NULL && req->cursor[0] != '\0') {
        /* The cursor must lie inside this user's (and filter's) range: it is
         * opaque to callers but never trusted. */
        if (keys_hex_decode(req->cursor, cursor, &clen) != KILN_OK || clen <= plen ||
            memcmp(cursor, prefix, plen) != 0) {
            *err = "cursor";
            return KILN_EINVAL;
        }
    }

    page->jobs = calloc(limit, sizeof *page->jobs);
    if (page->jobs == NULL) return KILN_ENOMEM;
    snap = rocksdb_create_snapshot(db->db);
    ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(ro, snap);
    it = rocksdb_create_iterator_cf(db->db, ro, db->cf[cf]);

    if (clen > 0) {
        rocksdb_iter_seek(it, (const char *)cursor, clen);
        size_t kl = 0;
        if (rocksdb_iter_valid(it)) {
            const char *k = rocksdb_iter_key(it, &kl);
            if (kl == clen && memcmp(k, cursor, clen) == 0) rocksdb_iter_next(it);
        }
    } else {
        rocksdb_iter_seek(it, (const char *)prefix, plen);
    }

    uint8_t last[KEYS_MAX];
    size_t last_len = 0;
    unsigned scanned = 0;
    int more = 0;
    while (rocksdb_iter_valid(it)) {
        size_t kl = 0;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl < plen || memcmp(k, prefix, plen) != 0) break;
        if (page->n == limit || scanned == LIST_SCAN_MAX) {
            more = 1;
            break;
        }
        scanned++;
        char id[KILN_ID_MAX_LEN + 1];
        if (kl <= KEYS_MAX && keys_index_id((const uint8_t *)k, kl, plen, id, sizeof id) == KILN_OK) {
            memcpy(last, k, kl);
            last_len = kl;
            Kiln__V1__JobRecord *rec = NULL;
            st = db_load_record(db, ro, NULL, id, &rec);
            if (st == KILN_OK) {
                if (state_filter && rec->status->state != req->state)
                    kiln__v1__job_record__free_unpacked(rec, NULL);
                else
                    page->jobs[page->n++] = rec;
            } else if (st != KILN_ENOTFOUND) {
                goto out;
            }
            st = KILN_OK;
        }
        rocksdb_iter_next(it);
    }
    char *ierr = NULL;
    rocksdb_iter_get_error(it, &ierr);
    if (ierr != NULL) {
        rocksdb_free(ierr);
        st = KILN_EIO;
        goto out;
    }
    if (more && last_len > 0) keys_hex_encode(last, last_len, page->next_cursor);
    st = list_counters(db, ro, user, page);
out:
    if (it != NULL) rocksdb_iter_destroy(it);
    if (ro != NULL) rocksdb_readoptions_destroy(ro);
    if (snap != NULL) rocksdb_release_snapshot(db->db, snap);
    if (st != KILN_OK) list_page_free(page);
    return st;
}
