/* db.c - the store's RocksDB: column families, point reads, batched writes. */
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "idem.h"
#include "keys.h"
#include "log.h"
#include "pb.h"

#define DB_MEMTABLE_BLOOM_RATIO 0.02 /* of the write buffer: ~1.3 MB at 64 MiB */
#define DB_BLOOM_BITS_PER_KEY 10.0
#define DB_MAX_OPEN_FILES 512

static const char *const db_cf_names[DB_CF_COUNT] = {
    "default", "jobs", "by_user", "by_user_state", "unviewed", "counters", "meta", "idem",
    "finished",
};

kiln_status db_open(const char *path, int64_t idem_ttl_ms, size_t cache_bytes, db_store **out)
{
    kiln_status st = KILN_OK;
    char *err = NULL;
    db_store *db = calloc(1, sizeof *db);
    if (db == NULL) return KILN_ENOMEM;
    if (pthread_mutex_init(&db->write_mu, NULL) != 0) {
        free(db);
        return KILN_ERR;
    }

    db->idem_ttl_ms = idem_ttl_ms;
    db->cache = rocksdb_cache_create_lru(cache_bytes); /* shared by all CFs */
    db->bbto = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(db->bbto, db->cache);
    db->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(db->opts, 1);
    rocksdb_options_set_create_missing_column_families(db->opts, 1);
    rocksdb_options_increase_parallelism(db->opts, 2);
    rocksdb_options_set_max_open_files(db->opts, DB_MAX_OPEN_FILES);
    rocksdb_options_set_block_based_table_factory(db->opts, db->bbto);

    /* jobs is read by point lookups only (status queries): bloom filters let
     * a miss skip SST files, and the filters stay in the block cache. */
    db->jobs_bbto = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(db->jobs_bbto, db->cache);
    rocksdb_block_based_options_set_filter_policy(
        db->jobs_bbto, rocksdb_filterpolicy_create_bloom_full(DB_BLOOM_BITS_PER_KEY));
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(db->jobs_bbto, 1);
    /* ...ahead of data blocks, and L0's pinned: a status read after a burst
     * of writes should not wait for an index block evicted by the burst. */
    rocksdb_block_based_options_set_cache_index_and_filter_blocks_with_high_priority(db->jobs_bbto, 1);
    rocksdb_block_based_options_set_pin_l0_filter_and_index_blocks_in_cache(db->jobs_bbto, 1);
    db->jobs_opts = rocksdb_options_create_copy(db->opts);
    rocksdb_options_set_block_based_table_factory(db->jobs_opts, db->jobs_bbto);
    /* Every new job's record is looked up before it is written (is it a
     * redelivery?) and misses: a whole-key bloom filter on the memtable
     * answers that without a skiplist search. */
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(db->jobs_opts, DB_MEMTABLE_BLOOM_RATIO);
    rocksdb_options_set_memtable_whole_key_filtering(db->jobs_opts, 1);

    /* idem drops expired reservations whenever RocksDB compacts it. */
    db->idem_filter = idem_compaction_filter_create(idem_ttl_ms);
    if (db->idem_filter == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    db->idem_opts = rocksdb_options_create_copy(db->opts);
    rocksdb_options_set_compaction_filter(db->idem_opts, db->idem_filter);

    const rocksdb_options_t *cf_opts[DB_CF_COUNT];
    for (int i = 0; i < DB_CF_COUNT; i++)
        cf_opts[i] = i == DB_CF_JOBS ? db->jobs_opts : i == DB_CF_IDEM ? db->idem_opts : db->opts;

    db->db = rocksdb_open_column_families(db->opts, path, DB_CF_COUNT, db_cf_names, cf_opts,
                                          db->cf, &err);
    if (err != NULL) {
        LOG_ERROR("rocksdb open failed path=%s err=\"%s\"", path, err);
        rocksdb_free(err);
        db->db = NULL;
        st = KILN_EIO;
        goto out;
    }
    db->ro = rocksdb_readoptions_create();
    db->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(db->wo, 0);
    LOG_INFO("rocksdb opened path=%s", path);
    *out = db;
    db = NULL;
out:
    db_close(db);
    return st;
}

void db_close(db_store *db)
{
    if (db == NULL) return;
    for (int i = 0; i < DB_CF_COUNT; i++)
        if (db->cf[i] != NULL) rocksdb_column_family_handle_destroy(db->cf[i]);
    if (db->db != NULL) rocksdb_close(db->db);
    if (db->ro != NULL) rocksdb_readoptions_destroy(db->ro);
    if (db->wo != NULL) rocksdb_writeoptions_destroy(db->wo);
    if (db->jobs_opts != NULL) rocksdb_options_destroy(db->jobs_opts);
    if (db->idem_opts != NULL) rocksdb_options_destroy(db->idem_opts);
    if (db->idem_filter != NULL) rocksdb_compactionfilter_destroy(db->idem_filter);
    if (db->opts != NULL) rocksdb_options_destroy(db->opts);
    if (db->jobs_bbto != NULL) rocksdb_block_based_options_destroy(db->jobs_bbto);
    if (db->bbto != NULL) rocksdb_block_based_options_destroy(db->bbto);
    if (db->cache != NULL) rocksdb_cache_destroy(db->cache);
    pthread_mutex_destroy(&db->write_mu);
    free(db);
}

void db_lock(db_store *db) { pthread_mutex_lock(&db->write_mu); }
void db_unlock(db_store *db) { pthread_mutex_unlock(&db->write_mu); }

kiln_status db_get(db_store *db, const rocksdb_readoptions_t *ro, db_batch *wb, db_cf cf,
                   const void *key, size_t klen, char **val, size_t *vlen)
{
    char *err = NULL;
    char *v = NULL;
    size_t n = 0;
    if (ro == NULL) ro = db->ro;
    if (wb != NULL) {
        const char *bv = NULL;
        int found = db_batch_find(wb, cf, key, klen, &bv, &n);
        if (found < 0) return KILN_ENOTFOUND;
        if (found > 0) {
            v = malloc(n > 0 ? n : 1); /* rocksdb_free() is free() */
            if (v == NULL) return KILN_ENOMEM;
            if (n > 0) memcpy(v, bv, n);
            *val = v;
            *vlen = n;
            return KILN_OK;
        }
    }
    v = rocksdb_get_cf(db->db, ro, db->cf[cf], key, klen, &n, &err);
    if (err != NULL) {
        LOG_ERROR("rocksdb get failed cf=%s err=\"%s\"", db_cf_names[cf], err);
        rocksdb_free(err);
        rocksdb_free(v);
        return KILN_EIO;
    }
    if (v == NULL) return KILN_ENOTFOUND;
    *val = v;
    *vlen = n;
    return KILN_OK;
}

kiln_status db_load_record(db_store *db, const rocksdb_readoptions_t *ro, db_batch *wb, const char *id, Kiln__V1__JobRecord **out)
{
    char *v = NULL;
    size_t n = 0;
    kiln_status st = db_get(db, ro, wb, DB_CF_JOBS, id, strlen(id), &v, &n);
    if (st != KILN_OK) return st;
    Kiln__V1__JobRecord *rec = kiln__v1__job_record__unpack(NULL, n, (const uint8_t *)v);
    rocksdb_free(v);
    if (rec == NULL || rec->request == NULL || rec->status == NULL) {
        LOG_ERROR("record undecodable job=%s bytes=%zu", id, n);
        if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
        return KILN_EIO;
    }
    *out = rec;
    return KILN_OK;
}

kiln_status db_write(db_store *db, db_batch *wb)
{
    char *err = NULL;
    rocksdb_writebatch_t *rb = rocksdb_writebatch_create();
    if (rb == NULL) return KILN_ENOMEM;
    kiln_status st = db_batch_fill(wb, db, rb);
    if (st != KILN_OK) {
        LOG_ERROR("write batch incomplete (out of memory)");
    } else if (rocksdb_writebatch_count(rb) > 0) {
        rocksdb_write(db->db, db->wo, rb, &err);
        if (err != NULL) {
            LOG_ERROR("rocksdb write failed err=\"%s\"", err);
            rocksdb_free(err);
            st = KILN_EIO;
        }
    }
    rocksdb_writebatch_destroy(rb);
    return st;
}

kiln_status db_get_u64(db_store *db, db_batch *wb, db_cf cf, const void *key, size_t klen,
                       uint64_t *out)
{
    char *v = NULL;
    size_t n = 0;
    kiln_status st = db_get(db, NULL, wb, cf, key, klen, &v, &n);
    if (st == KILN_ENOTFOUND) {
        *out = 0;
        return KILN_OK;
    }
    if (st != KILN_OK) return st;
    *out = (n == 8) ? keys_get_be64((const uint8_t *)v) : 0;
    rocksdb_free(v);
    return KILN_OK;
}

void db_put_u64(db_store *db, db_batch *wb, db_cf cf, const void *key, size_t klen, uint64_t v)
{
    uint8_t buf[8];
    (void)db;
    keys_put_be64(buf, v);
    db_batch_put(wb, cf, key, klen, buf, sizeof buf);
}
