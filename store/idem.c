/* idem.c - Idempotency-Key reservations in the idem column family. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "idem.h"
#include "keys.h"
#include "log.h"
#include "pb.h"
#include "sha256.h"

size_t idem_value_encode(uint8_t *buf, int64_t created_ms, const char *id,
                         const uint8_t hash[IDEM_HASH_LEN])
{
    size_t idlen = strlen(id);
    if (idlen == 0 || idlen > KILN_ID_MAX_LEN) return 0;
    keys_put_be64(buf, (uint64_t)created_ms);
    buf[8] = (uint8_t)idlen;
    memcpy(buf + 9, id, idlen);
    memcpy(buf + 9 + idlen, hash, IDEM_HASH_LEN);
    return 9 + idlen + IDEM_HASH_LEN;
}

kiln_status idem_value_decode(const void *val, size_t len, int64_t *created_ms, char *id,
                              uint8_t *hash)
{
    const uint8_t *p = val;
    if (len < 9 + 1 + IDEM_HASH_LEN) return KILN_EINVAL;
    size_t idlen = p[8];
    if (idlen == 0 || idlen > KILN_ID_MAX_LEN || len != 9 + idlen + IDEM_HASH_LEN)
        return KILN_EINVAL;
    *created_ms = (int64_t)keys_get_be64(p);
    memcpy(id, p + 9, idlen);
    id[idlen] = '\0';
    if (hash != NULL) memcpy(hash, p + 9 + idlen, IDEM_HASH_LEN);
    return KILN_OK;
}

int idem_expired(int64_t created_ms, int64_t now_ms, int64_t ttl_ms)
{
    return now_ms - created_ms >= ttl_ms;
}

kiln_status idem_reserve(db_store *db, db_batch *wb, const char *user,
                         const char *key, const uint8_t hash[IDEM_HASH_LEN], const char *new_id,
                         int64_t now_ms, idem_result *res)
{
    uint8_t k[KEYS_IDEM_MAX], v[IDEM_VALUE_MAX], old_hash[IDEM_HASH_LEN];
    char *val = NULL;
    size_t vlen = 0;
    int64_t created = 0;
    memset(res, 0, sizeof *res);
    if (!kiln_jobreq_id_ok(new_id) || !kiln_idem_key_ok(key)) return KILN_EINVAL;
    size_t klen = keys_idem(k, user, key);
    if (klen == 0) return KILN_EINVAL;

    kiln_status st = db_get(db, NULL, wb, DB_CF_IDEM, k, klen, &val, &vlen);
    if (st != KILN_OK && st != KILN_ENOTFOUND) return st;
    if (st == KILN_OK) {
        kiln_status ds = idem_value_decode(val, vlen, &created, res->id, old_hash);
        rocksdb_free(val);
        if (ds == KILN_OK && !idem_expired(created, now_ms, db->idem_ttl_ms)) {
            res->conflict = memcmp(old_hash, hash, IDEM_HASH_LEN) != 0;
            return KILN_OK;
        }
        /* Malformed or expired: the key is free again. */
    }
    size_t n = idem_value_encode(v, now_ms, new_id, hash);
    if (n == 0) return KILN_EINVAL;
    db_batch_put(wb, DB_CF_IDEM, (const char *)k, klen, (const char *)v, n);
    snprintf(res->id, sizeof res->id, "%s", new_id);
    res->is_new = 1;
    return KILN_OK;
}

kiln_status idem_request_hash(const Kiln__V1__JobRequest *req, uint8_t out[IDEM_HASH_LEN])
{
    Kiln__V1__JobRequest r = *req; /* shallow: nothing is freed through it */
    uint8_t *buf = NULL;
    size_t len = 0;
    r.id = "";
    r.created_at_ms = 0;
    r.idempotency_key = "";
    kiln_status st = kiln_pb_pack(&r.base, &buf, &len);
    if (st != KILN_OK) return st;
    st = kiln_sha256(buf, len, out);
    free(buf);
    return st;
}

/* ---- expiry ------------------------------------------------------------- */

typedef struct {
    int64_t ttl_ms;
} idem_filter_state;

static unsigned char idem_filter(void *state, int level, const char *key, size_t klen,
                                 const char *val, size_t vlen, char **new_val, size_t *new_len,
                                 unsigned char *changed)
{
    (void)level;
    (void)key;
    (void)klen;
    (void)new_val;
    (void)new_len;
    *changed = 0;
    const idem_filter_state *s = state;
    int64_t created = 0;
    char id[KILN_ID_MAX_LEN + 1];
    if (idem_value_decode(val, vlen, &created, id, NULL) != KILN_OK) return 1; /* garbage */
    return (unsigned char)idem_expired(created, kiln_now_ms(), s->ttl_ms);
}

static const char *idem_filter_name(void *state)
{
    (void)state;
    return "kiln-idem-ttl";
}

static void idem_filter_destroy(void *state) { free(state); }

rocksdb_compactionfilter_t *idem_compaction_filter_create(int64_t ttl_ms)
{
    idem_filter_state *s = malloc(sizeof *s);
    if (s == NULL) return NULL;
    s->ttl_ms = ttl_ms;
    return rocksdb_compactionfilter_create(s, idem_filter_destroy, idem_filter, idem_filter_name);
}

void idem_suggest_sweep(db_store *db)
{
    char *err = NULL;
    rocksdb_suggest_compact_range_cf(db->db, db->cf[DB_CF_IDEM], NULL, 0, NULL, 0, &err);
    if (err != NULL) {
        LOG_WARN("idem sweep not scheduled err=\"%s\"", err);
        rocksdb_free(err);
        return;
    }
    LOG_DEBUG("idem sweep scheduled");
}
