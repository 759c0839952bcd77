/* unannounced.c - the apply loop's record of jobs.done not yet confirmed
 * (unannounced.h). A slot's value is its batch's job ids, one per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "unannounced.h"

static const char *const unannounced_keys[UNANNOUNCED_SLOTS] = {"unannounced.0", "unannounced.1"};

void unannounced_stage(unannounced *u, db_batch *wb, int slot, const apply_done_list *done)
{
    const char *key = unannounced_keys[slot];
    u->confirmed[slot] = false;
    if (done->n == 0) {
        if (u->written[slot]) db_batch_delete(wb, DB_CF_META, key, strlen(key));
        u->written[slot] = false;
        return;
    }
    size_t len = 0;
    for (size_t i = 0; i < done->n; i++) len += strlen(done->items[i].id) + 1;
    char *ids = malloc(len);
    if (ids == NULL) {
        /* The batch goes without its slot: only a double fault needs it. */
        LOG_WARN("unannounced ids not kept (out of memory) jobs=%zu", done->n);
        return;
    }
    size_t at = 0;
    for (size_t i = 0; i < done->n; i++) {
        size_t n = strlen(done->items[i].id);
        memcpy(ids + at, done->items[i].id, n);
        ids[at + n] = '\n';
        at += n + 1;
    }
    db_batch_put(wb, DB_CF_META, key, strlen(key), ids, len);
    free(ids);
    u->written[slot] = true;
}

void unannounced_settled(unannounced *u, int slot, bool ok)
{
    u->confirmed[slot] = ok;
}

kiln_status unannounced_clear_confirmed(unannounced *u, db_store *db, db_batch *wb)
{
    bool any = false;
    for (int i = 0; i < UNANNOUNCED_SLOTS; i++) any = any || (u->written[i] && u->confirmed[i]);
    if (!any) return KILN_OK; /* the usual idle fetch: nothing to write */
    db_batch_clear(wb);
    for (int i = 0; i < UNANNOUNCED_SLOTS; i++)
        if (u->written[i] && u->confirmed[i])
            db_batch_delete(wb, DB_CF_META, unannounced_keys[i], strlen(unannounced_keys[i]));
    db_lock(db);
    kiln_status st = db_write(db, wb);
    db_unlock(db);
    db_batch_clear(wb);
    if (st != KILN_OK) return st;
    for (int i = 0; i < UNANNOUNCED_SLOTS; i++)
        if (u->confirmed[i]) u->written[i] = false;
    return KILN_OK;
}

kiln_status unannounced_load(unannounced *u, db_store *db, apply_sink *sink, size_t *n)
{
    *n = 0;
    for (int i = 0; i < UNANNOUNCED_SLOTS; i++) {
        const char *key = unannounced_keys[i];
        char *val = NULL;
        size_t len = 0;
        kiln_status st = db_get(db, NULL, NULL, DB_CF_META, key, strlen(key), &val, &len);
        u->written[i] = st == KILN_OK;
        u->confirmed[i] = false;
        if (st == KILN_ENOTFOUND) continue;
        if (st != KILN_OK) return st;
        for (size_t at = 0; at < len && st == KILN_OK;) {
            const char *nl = memchr(val + at, '\n', len - at);
            size_t idlen = (nl != NULL ? (size_t)(nl - val) : len) - at;
            char id[KILN_ID_MAX_LEN + 1];
            if (idlen > 0 && idlen <= KILN_ID_MAX_LEN) {
                memcpy(id, val + at, idlen);
                id[idlen] = '\0';
                st = apply_reannounce(db, id, sink);
                (*n)++;
            }
            at += idlen + 1;
        }
        rocksdb_free(val);
        if (st != KILN_OK) return st;
    }
    return KILN_OK;
}
