/* imagefile.c - saves generated images by appending them to a pack file,
 * <data_dir>/images/packs/<uuid7>.pack (common/imagepath.h), one pack per
 * thread that saves (each transfer thread has its own), so a thread's
 * appends are contiguous and need no lock. The job's COMPLETED transition
 * carries each image's pack, offset and size, and is published only after
 * the bytes were written, so a record never points at a partial image.
 *
 * Inside a transfer round (cons_image_stage_begin .. cons_image_flush) a
 * save only copies the bytes into the thread's stage, at the offset they
 * will have; cons_image_flush writes the stage with one pwrite, and
 * publish.c calls it before any transition leaves. One write per round
 * instead of one per image: ext4 pays its per-write work (delayed
 * allocation, zeroing the rest of each new block) once per round.
 *
 * A write that fails, a new data dir, a pack that reached
 * IMG_PACK_MAX_BYTES or one left idle (cons_image_set_roll_after) starts a
 * new pack; a pack is never appended to again
 * once left, nor by another thread or process. No fsync: like nats-server
 * 2.9.10 itself (which does not fsync per message), a saved image survives
 * a process crash but not a power loss (README, "Durability, honestly"). */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "cons.h"
#include "imagepath.h"
#include "log.h"
#include "uuid7.h"

#define IMG_PATH_MAX 4096
#define IMG_PACK_MAX_BYTES (1ULL << 30)
/* A stage is written when the next image would take it past this; a larger
 * image is written on its own. */
#define IMG_STAGE_MAX (512 * 1024)

/* The calling thread's pack and stage. */
typedef struct {
    int fd;                          /* -1: none open */
    char dir[IMG_PATH_MAX];          /* the data dir it lives under */
    char pack[KILN_PACK_NAME_MAX];
    uint64_t end;                    /* bytes written or staged: the next image's offset */
    bool staging;                    /* inside a round: saves are staged */
    unsigned char *stage;            /* bytes for [end - stage_len, end) */
    size_t stage_len, stage_cap;
    bool lost;                       /* staged bytes were lost since the last flush */
    int64_t last_save_ms;            /* kiln_mono_ms() of the last save into the pack */
} img_writer;

static _Thread_local img_writer img_self = {.fd = -1};
static _Atomic uint64_t img_pack_max = IMG_PACK_MAX_BYTES;
/* A pack not saved into for this long is left for a new one (0 = never), so
 * a pack the retention sweep finds old is one nobody appends to again
 * (consumer/retention.c). */
static _Atomic int64_t img_roll_after_ms = 0;

static kiln_status img_mkdir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST) return KILN_OK;
    LOG_ERROR("image mkdir failed path=%s error=\"%s\"", path, strerror(errno));
    return KILN_EIO;
}

/* Makes <data_dir>/images/packs and its parents. */
static kiln_status img_make_packs_dir(const char *data_dir)
{
    char images[IMG_PATH_MAX], packs[IMG_PATH_MAX];
    if (snprintf(images, sizeof images, "%s/images", data_dir) >= (int)sizeof images ||
        kiln_image_packs_dir(packs, sizeof packs, data_dir) != KILN_OK)
        return KILN_EINVAL;
    kiln_status st = img_mkdir(data_dir);
    if (st == KILN_OK) st = img_mkdir(images);
    if (st == KILN_OK) st = img_mkdir(packs);
    return st;
}

static kiln_status img_write_at(int fd, const unsigned char *bytes, size_t len, uint64_t at)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = pwrite(fd, bytes + off, len - off, (off_t)(at + off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return KILN_EIO;
        off += (size_t)n;
    }
    return KILN_OK;
}

/* Drops the pack and anything staged for it (counted as lost). */
static void img_close_pack(img_writer *w)
{
    if (w->stage_len > 0) w->lost = true;
    w->stage_len = 0;
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
}

/* Writes len bytes at `at` of the pack. On failure the pack is left (the
 * next image goes to a new one) and what is staged for it is lost. */
static kiln_status img_write_or_leave(img_writer *w, const unsigned char *bytes, size_t len,
                                      uint64_t at)
{
    if (img_write_at(w->fd, bytes, len, at) == KILN_OK) return KILN_OK;
    LOG_ERROR("image save failed pack=%s bytes=%zu error=\"%s\"", w->pack, len, strerror(errno));
    img_close_pack(w);
    return KILN_EIO;
}

/* Writes the stage to its place in the pack. */
static kiln_status img_write_stage(img_writer *w)
{
    if (w->stage_len == 0) return KILN_OK;
    kiln_status st = img_write_or_leave(w, w->stage, w->stage_len, w->end - w->stage_len);
    if (st == KILN_OK) w->stage_len = 0;
    return st;
}

/* Opens a new pack under data_dir. */
static kiln_status img_open_pack(img_writer *w, const char *data_dir)
{
    char id[40], path[IMG_PATH_MAX];
    (void)img_write_stage(w);
    img_close_pack(w);
    if (strlen(data_dir) >= sizeof w->dir || kiln_uuid7(id) != KILN_OK) return KILN_EINVAL;
    snprintf(w->pack, sizeof w->pack, "%s.pack", id);
    if (kiln_image_pack_path(path, sizeof path, data_dir, w->pack) != KILN_OK) return KILN_EINVAL;
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    int fd = open(path, flags, 0644);
    if (fd < 0 && errno == ENOENT && img_make_packs_dir(data_dir) == KILN_OK)
        fd = open(path, flags, 0644);
    if (fd < 0) {
        LOG_ERROR("image pack open failed path=%s error=\"%s\"", path, strerror(errno));
        return KILN_EIO;
    }
    w->fd = fd;
    w->end = 0;
    snprintf(w->dir, sizeof w->dir, "%s", data_dir);
    LOG_INFO("image pack opened path=%s", path);
    return KILN_OK;
}

/* Makes room for len more bytes in the stage; false when it cannot grow. */
static bool img_stage_reserve(img_writer *w, size_t len)
{
    if (w->stage_len + len <= w->stage_cap) return true;
    size_t cap = w->stage_cap > 0 ? w->stage_cap : 64 * 1024;
    while (cap < w->stage_len + len) cap *= 2;
    unsigned char *grown = realloc(w->stage, cap);
    if (grown == NULL) return false;
    w->stage = grown;
    w->stage_cap = cap;
    return true;
}

kiln_status cons_image_save(const char *data_dir, const unsigned char *bytes, size_t len,
                            cons_image *img)
{
    img_writer *w = &img_self;
    kiln_status st = KILN_OK;
    /* A new pack writes what is staged for the old one first. */
    int64_t now = kiln_mono_ms(), roll_after = atomic_load(&img_roll_after_ms);
    if (w->fd < 0 || w->end + len > atomic_load(&img_pack_max) || strcmp(w->dir, data_dir) != 0 ||
        (roll_after > 0 && now - w->last_save_ms >= roll_after))
        st = img_open_pack(w, data_dir);
    if (st != KILN_OK) return st;
    w->last_save_ms = now;
    bool staged = w->staging && len <= IMG_STAGE_MAX;
    if (staged && w->stage_len + len > IMG_STAGE_MAX && (st = img_write_stage(w)) != KILN_OK)
        return st;
    uint64_t at = w->end;
    if (staged && img_stage_reserve(w, len)) {
        memcpy(w->stage + w->stage_len, bytes, len);
        w->stage_len += len;
    } else {
        /* Outside a round, too large, or no memory for the stage: written
         * now, after what is staged (which precedes it in the pack). */
        if ((st = img_write_stage(w)) != KILN_OK) return st;
        if ((st = img_write_or_leave(w, bytes, len, at)) != KILN_OK) return st;
    }
    _Static_assert(sizeof img->pack == sizeof w->pack, "pack names have one size");
    memcpy(img->pack, w->pack, sizeof img->pack);
    img->offset = at;
    img->size_bytes = len;
    w->end = at + len;
    return KILN_OK;
}

void cons_image_stage_begin(void) { img_self.staging = true; }

kiln_status cons_image_flush(void)
{
    img_writer *w = &img_self;
    kiln_status st = img_write_stage(w);
    if (w->lost) st = KILN_EIO;
    w->lost = false;
    return st;
}

void cons_image_stage_end(void)
{
    (void)img_write_stage(&img_self); /* empty after the round's last flush */
    img_self.staging = false;
}

void cons_image_set_roll_after(int64_t ms) { atomic_store(&img_roll_after_ms, ms > 0 ? ms : 0); }

void cons_image_set_pack_max(uint64_t bytes)
{
    atomic_store(&img_pack_max, bytes > 0 ? bytes : IMG_PACK_MAX_BYTES);
}

void cons_image_close(void)
{
    img_writer *w = &img_self;
    (void)img_write_stage(w);
    img_close_pack(w);
    w->lost = false;
    w->staging = false;
    free(w->stage);
    w->stage = NULL;
    w->stage_cap = 0;
}
