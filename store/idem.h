/* idem.h - Idempotency-Key reservations in the idem column family.
 *
 * Key [u8 len][user][key] (keys_idem); value [be64 created_ms][u8 idlen][id]
 * [32-byte body hash]. An entry older than the TTL (KILN_IDEM_TTL, at least
 * 24 h) counts as free; a compaction filter drops such entries, and the apply
 * thread asks RocksDB now and then to compact the idem CF so they do not
 * linger on disk. */
#ifndef STORE_IDEM_H
#define STORE_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "jobreq.h"
#include "kiln.pb-c.h"
#include "sha256.h"
#include "status.h"

#define IDEM_HASH_LEN KILN_SHA256_LEN
#define IDEM_VALUE_MAX (8 + 1 + KILN_ID_MAX_LEN + IDEM_HASH_LEN)

/* Encodes a value into buf (IDEM_VALUE_MAX bytes); returns its length, 0
 * when id is empty or too long. */
size_t idem_value_encode(uint8_t *buf, int64_t created_ms, const char *id,
                         const uint8_t hash[IDEM_HASH_LEN]);
/* Decodes a value. id: KILN_ID_MAX_LEN + 1 bytes; hash may be NULL.
 * KILN_EINVAL when malformed. */
kiln_status idem_value_decode(const void *val, size_t len, int64_t *created_ms, char *id,
                              uint8_t *hash);
/* 1 when an entry created at created_ms is past ttl_ms at now_ms. */
int idem_expired(int64_t created_ms, int64_t now_ms, int64_t ttl_ms);

typedef struct {
    char id[KILN_ID_MAX_LEN + 1]; /* the job id the key maps to */
    int is_new;                   /* this call reserved the key for new_id */
    int conflict;                 /* the key maps to id with another body hash */
} idem_result;

/* Looks up (user, key) through wb and, when it is free (absent or expired),
 * stages the entry (now_ms, new_id, hash) into wb. The caller holds
 * db_lock() and writes wb. KILN_EINVAL for a bad user/key/id. */
kiln_status idem_reserve(db_store *db, db_batch *wb, const char *user,
                         const char *key, const uint8_t hash[IDEM_HASH_LEN], const char *new_id,
                         int64_t now_ms, idem_result *res);

/* The hash recorded for a JobRequest published straight to NATS: SHA-256
 * of the request packed without id, created_at_ms and idempotency_key. */
kiln_status idem_request_hash(const Kiln__V1__JobRequest *req, uint8_t out[IDEM_HASH_LEN]);

/* A compaction filter dropping entries expired by ttl_ms, for the idem CF
 * options. The caller destroys it (rocksdb_compactionfilter_destroy) after
 * the database is closed. */
rocksdb_compactionfilter_t *idem_compaction_filter_create(int64_t ttl_ms);

/* Asks RocksDB to compact the idem CF in the background (the filter then
 * drops expired entries). Cheap to call; never blocks on the compaction. */
void idem_suggest_sweep(db_store *db);

#endif
