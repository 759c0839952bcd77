/* db.h - the store's RocksDB: column families, point reads, batched writes.
 *
 * Threads: reads (db_get, db_load_record without a batch) are safe from any
 * thread. Every read-modify-write of records, indexes or counters happens
 * under db_lock() so the apply thread and the request threads (cancel,
 * viewed) never interleave. */
#ifndef STORE_DB_H
#define STORE_DB_H

#include <pthread.h>
#include <rocksdb/c.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.pb-c.h"
#include "status.h"

typedef enum {
    DB_CF_DEFAULT = 0,
    DB_CF_JOBS,          /* id -> JobRecord */
    DB_CF_BY_USER,       /* keys_by_user -> "" */
    DB_CF_BY_USER_STATE, /* keys_by_user_state -> "" */
    DB_CF_UNVIEWED,      /* keys_by_user -> "" (terminal and not viewed) */
    DB_CF_COUNTERS,      /* keys_counter -> be64 */
    DB_CF_META,          /* DB_META_APPLIED_SEQ -> be64 */
    DB_CF_IDEM,          /* keys_idem -> idem value (idem.h) */
    DB_CF_FINISHED,      /* keys_finished -> "" (terminal jobs, for retention.c) */
    DB_CF_COUNT
} db_cf;

#define DB_META_APPLIED_SEQ "applied_seq"
/* Set once every terminal record has its finished entry (retention.c). */
#define DB_META_FINISHED_INDEXED "finished_indexed"

typedef struct {
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[DB_CF_COUNT];
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo;
    /* Owned option objects, kept until close. */
    rocksdb_options_t *opts;
    rocksdb_options_t *jobs_opts;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_block_based_table_options_t *jobs_bbto;
    rocksdb_cache_t *cache;
    rocksdb_options_t *idem_opts;
    rocksdb_compactionfilter_t *idem_filter;
    int64_t idem_ttl_ms; /* Idempotency-Key entries older than this are free */
    int64_t result_ttl_ms; /* KILN_RESULT_TTL, reported by kiln.store.ping; main sets it */
    pthread_mutex_t write_mu;
} db_store;

/* A write batch that reads its own writes: every staged put/delete is kept
 * in a hash table, so db_get() through it sees the batch first, and
 * db_write() writes only the last value of each key (a job whose request
 * and transitions arrive in one batch writes its record and index entries
 * once, not once per message). Not thread-safe; one per writer. */
typedef struct db_batch db_batch;

kiln_status db_batch_create(db_batch **out);
void db_batch_destroy(db_batch *b); /* NULL-safe */
/* Forgets everything staged (keeps the memory for the next batch). */
void db_batch_clear(db_batch *b);
/* Stage a put / delete. An allocation failure is remembered and reported
 * by db_write() (the batch is then not written). */
void db_batch_put(db_batch *b, db_cf cf, const void *key, size_t klen, const void *val,
                  size_t vlen);
void db_batch_delete(db_batch *b, db_cf cf, const void *key, size_t klen);

/* Opens (creating if missing) the database at path; idem_ttl_ms is how long
 * Idempotency-Key entries are kept. *out only on success; the caller closes
 * it with db_close(). */
kiln_status db_open(const char *path, int64_t idem_ttl_ms, size_t cache_bytes, db_store **out);
/* For db.c: 1 and the staged value when the batch holds a put of (cf, key),
 * -1 when it holds a delete, 0 when it holds nothing for it. */
int db_batch_find(const db_batch *b, db_cf cf, const void *key, size_t klen, const char **val,
                  size_t *vlen);
/* For db.c: appends the last operation of every key to out, in key order
 * (column family, then key). KILN_ENOMEM when staging ran out of memory. */
kiln_status db_batch_fill(db_batch *b, db_store *db, rocksdb_writebatch_t *out);

/* NULL-safe. Flushes nothing: the WAL already holds every write. */
void db_close(db_store *db);

void db_lock(db_store *db);
void db_unlock(db_store *db);

/* Point read. ro NULL = default read options. wb non-NULL reads through the
 * batch (its own pending writes first). *val is malloc'ed (free with
 * rocksdb_free). KILN_ENOTFOUND when absent, KILN_EIO on a RocksDB error. */
kiln_status db_get(db_store *db, const rocksdb_readoptions_t *ro, db_batch *wb,
                   db_cf cf, const void *key, size_t klen, char **val, size_t *vlen);

/* Reads and decodes the record of id. Free *out with
 * kiln__v1__job_record__free_unpacked(). KILN_ENOTFOUND when absent,
 * KILN_EIO when undecodable. */
kiln_status db_load_record(db_store *db, const rocksdb_readoptions_t *ro,
                           db_batch *wb, const char *id, Kiln__V1__JobRecord **out);

/* Writes the batch (sync=false: the WAL survives a process crash). The
 * batch keeps its contents; db_batch_clear() before the next one. */
kiln_status db_write(db_store *db, db_batch *wb);

/* The be64 at key in cf, 0 when absent. */
kiln_status db_get_u64(db_store *db, db_batch *wb, db_cf cf, const void *key, size_t klen,
                       uint64_t *out);
void db_put_u64(db_store *db, db_batch *wb, db_cf cf, const void *key, size_t klen, uint64_t v);

#endif
