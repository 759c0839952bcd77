/* fuzz_store_apply.c - the store's input: JobRequests from jobs.generate*
 * (any service may publish there) and JobTransitions on kiln.tx, applied to
 * a real RocksDB in a temp dir (store/apply.c), read back by the queries
 * (store/list.c) and rendered as the gateway renders them (job object, SSE
 * event). Messages are built from the input's bytes (so they decode and
 * reach the rules) or passed on raw; one byte of a built message may be
 * flipped. The contract's invariant is checked after every write: a
 * terminal state never changes again. A retention pass (store/retention.c)
 * far in the future must leave no finished record and no index entry
 * naming a record that is gone. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../store/apply.h"
#include "clock.h"
#include "../../store/db.h"
#include "fuzz_input.h"
#include "fuzz_tmpdir.h"
#include "imagepath.h"
#include "../../gateway/job_json.h"
#include "../../store/keys.h"
#include "../../store/list.h"
#include "../../store/retention.h"
#include "pb.h"
#include "../../gateway/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_IDS 4
#define FUZZ_OPS_MAX 32
static const char *const fuzz_ids[FUZZ_IDS] = {"j0", "j1", "job-2", "01a2f3b4-c5d6-7e8f"};
static const char *const fuzz_users[2] = {"alice", "bob"};

static db_store *fuzz_db;
static db_batch *fuzz_wb;

static void fuzz_close(void)
{
    db_batch_destroy(fuzz_wb);
    db_close(fuzz_db);
}

static void fuzz_fail(const char *what, const char *id)
{
    fprintf(stderr, "fuzz_store_apply: %s (job %s)\n", what, id);
    abort();
}

static void fuzz_open(void)
{
    /* atexit runs in reverse: the database closes before its dir goes. */
    const char *dir = fz_tmpdir("store");
    if (dir == NULL || db_open(dir, 86400000, 8u << 20, &fuzz_db) != KILN_OK ||
        db_batch_create(&fuzz_wb) != KILN_OK)
        fuzz_fail("cannot open a RocksDB in a temp dir", "-");
    atexit(fuzz_close);
}

/* An id: mostly one of a few, so that messages meet the same records. */
static char *fuzz_id(fz_input *in)
{
    uint8_t k = fz_u8(in);
    return k < 240 ? (char *)fuzz_ids[k % FUZZ_IDS] : fz_str(in, 80);
}

static void fuzz_request(fz_input *in, Kiln__V1__JobRequest *r,
                         Kiln__V1__JobRequest__ParamsEntry *pe, Kiln__V1__JobRequest__ParamsEntry **pp)
{
    kiln__v1__job_request__init(r);
    r->id = fuzz_id(in);
    uint8_t u = fz_u8(in);
    r->user_id = u < 250 ? (char *)fuzz_users[u % 2] : fz_str(in, 140);
    r->prompt = fz_str(in, 64);
    r->model = fz_str(in, 16);
    r->size = fz_str(in, 12);
    r->n = fz_u8(in);
    r->priority = (Kiln__V1__Priority)(fz_u8(in) % 4);
    r->created_at_ms = fz_i64(in);
    r->not_before_ms = fz_i64(in);
    r->timeout_s = fz_u32(in);
    r->max_attempts = fz_u8(in);
    r->idempotency_key = fz_u8(in) & 1 ? fz_str(in, 16) : "";
    r->n_params = fz_u8(in) % 3;
    for (size_t i = 0; i < r->n_params; i++) {
        kiln__v1__job_request__params_entry__init(&pe[i]);
        pe[i].key = fz_str(in, 8);
        pe[i].value = fz_str(in, 8);
        pp[i] = &pe[i];
    }
    r->params = pp;
    for (size_t i = 0; i < r->n_params; i++)
        if (pe[i].key == NULL || pe[i].value == NULL) r->n_params = 0;
    if (r->user_id == NULL) r->user_id = "";
    if (r->id == NULL) r->id = "";
}

/* Packs m, flips one byte when the input says so, and passes it on. */
/* A message that changed a record leaves one that reads back (through the
 * batch, as the next message of the batch would read it). */
static void fuzz_record_reads(const uint8_t *buf, size_t len, int transition)
{
    Kiln__V1__JobRequest *r = NULL;
    Kiln__V1__JobTransition *t = NULL;
    const char *id = NULL;
    if (transition) {
        t = kiln__v1__job_transition__unpack(NULL, len, buf);
        if (t != NULL && t->request != NULL) id = t->request->id;
    } else {
        r = kiln__v1__job_request__unpack(NULL, len, buf);
        if (r != NULL) id = r->id;
    }
    Kiln__V1__JobRecord *rec = NULL;
    if (id == NULL || db_load_record(fuzz_db, NULL, fuzz_wb, id, &rec) != KILN_OK)
        fuzz_fail("a changed record does not read back", id != NULL ? id : "?");
    kiln__v1__job_record__free_unpacked(rec, NULL);
    if (t != NULL) kiln__v1__job_transition__free_unpacked(t, NULL);
    if (r != NULL) kiln__v1__job_request__free_unpacked(r, NULL);
}

static kiln_status fuzz_apply_packed(fz_input *in, const ProtobufCMessage *m, int transition,
                                     apply_sink *sink)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int changed = 0;
    if (kiln_pb_pack(m, &buf, &len) != KILN_OK) return KILN_ENOMEM;
    uint8_t flip = fz_u8(in);
    if (flip >= 200 && len > 0) buf[fz_u32(in) % len] ^= (uint8_t)(1u << (flip % 8));
    kiln_status st = transition ? apply_transition(fuzz_db, fuzz_wb, buf, len, sink, &changed)
                                : apply_job_request(fuzz_db, fuzz_wb, NULL, buf, len, kiln_now_ms(),
                                                    fz_u32(in), sink, &changed);
    if (st == KILN_OK && changed) fuzz_record_reads(buf, len, transition);
    free(buf);
    return st;
}

static kiln_status fuzz_transition(fz_input *in, apply_sink *sink)
{
    Kiln__V1__JobRequest r;
    Kiln__V1__JobRequest__ParamsEntry pe[2], *pp[2];
    Kiln__V1__JobTransition t = KILN__V1__JOB_TRANSITION__INIT;
    Kiln__V1__Image im[2], *imp[2];
    Kiln__V1__ImageBlob bl[2], *blp[2];
    Kiln__V1__JobError err = KILN__V1__JOB_ERROR__INIT;
    Kiln__V1__Progress prog = KILN__V1__PROGRESS__INIT;

    fuzz_request(in, &r, pe, pp);
    t.request = fz_u8(in) < 230 ? &r : NULL;
    t.state = (Kiln__V1__JobState)(fz_u8(in) % 7);
    t.attempt = fz_u8(in) % 12;
    t.at_ms = fz_i64(in);
    t.retry_at_ms = fz_i64(in);
    t.started_at_ms = fz_i64(in);
    t.n_images = fz_u8(in) % 3;
    for (size_t i = 0; i < t.n_images; i++) {
        kiln__v1__image__init(&im[i]);
        im[i].index = fz_u8(in);
        im[i].url = fz_str(in, 24);
        im[i].content_type = fz_str(in, 12);
        im[i].size_bytes = fz_u32(in);
        if (im[i].url == NULL || im[i].content_type == NULL) im[i].url = im[i].content_type = "";
        imp[i] = &im[i];
    }
    t.images = imp;
    t.n_blobs = fz_u8(in) % 3;
    for (size_t i = 0; i < t.n_blobs; i++) {
        kiln__v1__image_blob__init(&bl[i]);
        bl[i].index = fz_u8(in);
        bl[i].pack = fz_u8(in) & 1 ? "01a2f3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6b.pack" : fz_str(in, 70);
        if (bl[i].pack == NULL) bl[i].pack = "";
        bl[i].offset = (uint64_t)fz_i64(in);
        bl[i].size = (uint64_t)fz_i64(in);
        blp[i] = &bl[i];
    }
    t.blobs = blp;
    if (fz_u8(in) & 1) {
        err.code = fz_str(in, 16);
        err.message = fz_str(in, 40);
        if (err.code != NULL && err.message != NULL) t.error = &err;
    }
    if (fz_u8(in) & 1) {
        prog.percent = fz_u32(in);
        prog.message = fz_str(in, 20);
        if (prog.message != NULL) t.progress = &prog;
    }
    return fuzz_apply_packed(in, &t.base, 1, sink);
}

static void fuzz_render(const Kiln__V1__JobRecord *rec, const char *id)
{
    json_t *job = gw_jobjson_job(rec);
    if (job == NULL) fuzz_fail("a stored record does not render as a job object", id);
    char *text = json_dumps(job, JSON_COMPACT);
    if (text == NULL) fuzz_fail("a job object does not serialise", id);
    free(text);
    json_decref(job);
    size_t len = 0;
    int terminal = 0;
    char *ev = gw_sse_format_event(rec, 7, &len, &terminal);
    if (ev == NULL) fuzz_fail("a stored record does not render as an SSE event", id);
    /* One event, three lines: a line break inside the data would let a
     * prompt forge events in the stream. */
    const char *data = strstr(ev, "\ndata: ");
    if (strncmp(ev, "event: job\nid: ", 15) != 0 || data == NULL || len < 2 ||
        strchr(ev + 15, '\n') != data ||
        strcspn(data + 7, "\r\n") != len - (size_t)(data + 7 - ev) - 2 ||
        strcmp(ev + len - 2, "\n\n") != 0)
        fuzz_fail("an SSE event is not one event of three lines", id);
    free(ev);
    char path[512];
    for (size_t i = 0; i < rec->n_blobs; i++)
        if (rec->blobs[i] != NULL && rec->blobs[i]->pack != NULL)
            (void)kiln_image_pack_path(path, sizeof path, "/srv/kiln", rec->blobs[i]->pack);
}

/* Each known job's terminal state (UNSPECIFIED: not terminal or unknown). */
static void fuzz_terminal_states(Kiln__V1__JobState *out, int render)
{
    for (size_t i = 0; i < FUZZ_IDS; i++) {
        Kiln__V1__JobRecord *rec = NULL;
        out[i] = KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
        if (db_load_record(fuzz_db, NULL, NULL, fuzz_ids[i], &rec) != KILN_OK || rec == NULL)
            continue;
        if (rec->status != NULL && kiln_state_is_terminal(rec->status->state))
            out[i] = rec->status->state;
        if (render) fuzz_render(rec, fuzz_ids[i]);
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
}

static void fuzz_commit(const Kiln__V1__JobState *before)
{
    Kiln__V1__JobState after[FUZZ_IDS];
    if (db_write(fuzz_db, fuzz_wb) != KILN_OK) fuzz_fail("RocksDB write failed", "-");
    db_batch_clear(fuzz_wb);
    fuzz_terminal_states(after, 1);
    for (size_t i = 0; i < FUZZ_IDS; i++)
        if (before[i] != KILN__V1__JOB_STATE__JOB_STATE_UNSPECIFIED && after[i] != before[i])
            fuzz_fail("a terminal state changed", fuzz_ids[i]);
}

/* Every entry of cf names an existing record: the id at the key's end,
 * inverted in the by_user* keys (keys.c), plain in finished. */
static void fuzz_entries_name_records(db_cf cf)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(fuzz_db->db, fuzz_db->ro, fuzz_db->cf[cf]);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl = 0;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        char id[KILN_ID_MAX_LEN + 1];
        kiln_status st = KILN_EINVAL;
        if (cf == DB_CF_FINISHED && kl > 8 && kl - 8 <= KILN_ID_MAX_LEN) {
            memcpy(id, k + 8, kl - 8);
            id[kl - 8] = '\0';
            st = KILN_OK;
        } else if (cf != DB_CF_FINISHED && kl > 0) {
            size_t prefix = 1 + (size_t)k[0] + (cf == DB_CF_BY_USER_STATE ? 1 : 0);
            st = keys_index_id(k, kl, prefix, id, sizeof id);
        }
        if (st != KILN_OK) fuzz_fail("a malformed index entry", "-");
        Kiln__V1__JobRecord *rec = NULL;
        if (db_load_record(fuzz_db, NULL, NULL, id, &rec) != KILN_OK)
            fuzz_fail("an index entry names no record after retention", id);
        kiln__v1__job_record__free_unpacked(rec, NULL);
    }
    rocksdb_iter_destroy(it);
}

/* Retention far in the future: every finished job goes, with its entries. */
static void fuzz_retention(void)
{
    size_t removed = 0;
    int more = 1;
    retention_cursor cur = {.len = 0};
    while (more)
        if (retention_pass(fuzz_db, &cur, 1000, INT64_MAX / 4, 2, &removed, &more) != KILN_OK)
            fuzz_fail("retention pass failed", "-");
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(fuzz_db->db, fuzz_db->ro,
                                                        fuzz_db->cf[DB_CF_JOBS]);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t vl = 0;
        const uint8_t *v = (const uint8_t *)rocksdb_iter_value(it, &vl);
        Kiln__V1__JobRecord *rec = kiln__v1__job_record__unpack(NULL, vl, v);
        int finished = rec != NULL && rec->status != NULL &&
                       kiln_state_is_terminal(rec->status->state);
        if (finished)
            fprintf(stderr, "left: id=%s created=%lld completed=%lld updated=%lld key=%s\n",
                    rec->status->id, (long long)rec->status->created_at_ms,
                    (long long)rec->status->completed_at_ms, (long long)rec->updated_at_ms,
                    rec->request != NULL && rec->request->idempotency_key ? rec->request->idempotency_key : "-");
        if (rec != NULL) kiln__v1__job_record__free_unpacked(rec, NULL);
        if (finished) fuzz_fail("a finished record outlived retention", "-");
    }
    rocksdb_iter_destroy(it);
    db_cf cfs[] = {DB_CF_BY_USER, DB_CF_BY_USER_STATE, DB_CF_UNVIEWED, DB_CF_FINISHED};
    for (size_t i = 0; i < sizeof cfs / sizeof cfs[0]; i++) fuzz_entries_name_records(cfs[i]);
}

static void fuzz_list(fz_input *in)
{
    Kiln__V1__StoreRequest q = KILN__V1__STORE_REQUEST__INIT;
    list_page page;
    const char *err = NULL;
    q.user_id = (char *)fuzz_users[fz_u8(in) % 2];
    q.limit = fz_u8(in);
    q.state = (Kiln__V1__JobState)(fz_u8(in) % 7);
    q.unviewed = fz_u8(in) & 1;
    q.cursor = fz_str(in, 40);
    if (q.cursor == NULL) q.cursor = "";
    memset(&page, 0, sizeof page);
    if (list_read(fuzz_db, &q, &page, &err) == KILN_OK) {
        for (size_t i = 0; i < page.n; i++) fuzz_render(page.jobs[i], "listed");
        list_page_free(&page);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_db == NULL) fuzz_open();
    fz_input in;
    apply_sink sink;
    Kiln__V1__JobState before[FUZZ_IDS];
    memset(&sink, 0, sizeof sink);
    fz_init(&in, data, size);
    sink.defer_counters = fz_u8(&in) & 1; /* as the apply loop, or a query's own batch */
    fuzz_terminal_states(before, 0);
    db_batch_clear(fuzz_wb);
    db_lock(fuzz_db);
    for (int op = 0; op < FUZZ_OPS_MAX && in.n > 0; op++) {
        uint8_t kind = fz_u8(&in);
        kiln_status st = KILN_OK;
        int changed = 0;
        switch (kind % 7) {
        case 0: {
            Kiln__V1__JobRequest r;
            Kiln__V1__JobRequest__ParamsEntry pe[2], *pp[2];
            fuzz_request(&in, &r, pe, pp);
            st = fuzz_apply_packed(&in, &r.base, 0, &sink);
            break;
        }
        case 1: st = fuzz_transition(&in, &sink); break;
        case 2:
        case 3: { /* raw bytes: a message that may not decode at all */
            size_t len = fz_u8(&in);
            if (len > in.n) len = in.n;
            uint8_t *raw = (uint8_t *)fz_copy(in.p, len);
            if (raw == NULL) break;
            st = kind % 7 == 2 ? apply_transition(fuzz_db, fuzz_wb, raw, len, &sink, &changed)
                               : apply_job_request(fuzz_db, fuzz_wb, NULL, raw, len, kiln_now_ms(), 1,
                                                   &sink, &changed);
            if (st == KILN_OK && changed) fuzz_record_reads(raw, len, kind % 7 == 2);
            free(raw);
            in.p += len;
            in.n -= len;
            break;
        }
        case 4: {
            const char *id = fuzz_id(&in);
            st = apply_viewed(fuzz_db, fuzz_wb, id != NULL ? id : "",
                              fuzz_users[fz_u8(&in) % 2], &sink.events);
            if (st == KILN_ENOTFOUND) st = KILN_OK;
            break;
        }
        case 5:
            if (apply_sink_flush_counters(fuzz_db, fuzz_wb, &sink) != KILN_OK)
                fuzz_fail("counters could not be staged", "-");
            fuzz_commit(before);
            db_unlock(fuzz_db);
            fuzz_list(&in);
            fuzz_terminal_states(before, 0);
            db_lock(fuzz_db);
            break;
        case 6: /* retention: removed records may come back, as new ones */
            if (apply_sink_flush_counters(fuzz_db, fuzz_wb, &sink) != KILN_OK)
                fuzz_fail("counters could not be staged", "-");
            fuzz_commit(before);
            db_unlock(fuzz_db);
            fuzz_retention();
            fuzz_terminal_states(before, 0);
            db_lock(fuzz_db);
            break;
        default: break;
        }
        if (st == KILN_EIO) fuzz_fail("RocksDB failed", "-");
        apply_done_reset(&sink.done);
        events_reset(&sink.events);
        fz_free(&in);
    }
    if (apply_sink_flush_counters(fuzz_db, fuzz_wb, &sink) != KILN_OK)
        fuzz_fail("counters could not be staged", "-");
    fuzz_commit(before);
    db_unlock(fuzz_db);
    apply_sink_free(&sink);
    fz_free(&in);
    return 0;
}
