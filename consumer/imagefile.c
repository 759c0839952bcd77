/* imagefile.c - saves generated images by appending them to this process's
 * pack file, <data_dir>/images/packs/<uuid7>.pack (common/imagepath.h). The
 * job's COMPLETED transition carries each image's pack, offset and size, and
 * is published only after the bytes were written, so a record never points
 * at a partial image. A write that fails, a new data dir or a pack that
 * reached IMG_PACK_MAX_BYTES starts a new pack; a pack is never appended to
 * again once left, nor by another process. No fsync: like nats-server
 * 2.9.10 itself (which does not fsync per message), a saved image survives
 * a process crash but not a power loss (README, "Durability, honestly"). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cons.h"
#include "imagepath.h"
#include "log.h"
#include "uuid7.h"

#define IMG_PATH_MAX 4096
#define IMG_PACK_MAX_BYTES (1ULL << 30)

/* The pack being appended to; every field under img_mu (transfer threads
 * save at once; an append costs a few microseconds). */
static pthread_mutex_t img_mu = PTHREAD_MUTEX_INITIALIZER;
static int img_fd = -1;
static char img_dir[IMG_PATH_MAX];      /* the data dir it lives under */
static char img_pack[KILN_PACK_NAME_MAX];
static uint64_t img_end;                /* bytes written to it */
static uint64_t img_pack_max = IMG_PACK_MAX_BYTES;

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

static void img_close_pack(void)
{
    if (img_fd >= 0) close(img_fd);
    img_fd = -1;
}

/* Opens a new pack under data_dir (img_mu held). */
static kiln_status img_open_pack(const char *data_dir)
{
    char id[40], path[IMG_PATH_MAX];
    img_close_pack();
    if (strlen(data_dir) >= sizeof img_dir || kiln_uuid7(id) != KILN_OK) return KILN_EINVAL;
    snprintf(img_pack, sizeof img_pack, "%s.pack", id);
    if (kiln_image_pack_path(path, sizeof path, data_dir, img_pack) != KILN_OK) return KILN_EINVAL;
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    int fd = open(path, flags, 0644);
    if (fd < 0 && errno == ENOENT && img_make_packs_dir(data_dir) == KILN_OK)
        fd = open(path, flags, 0644);
    if (fd < 0) {
        LOG_ERROR("image pack open failed path=%s error=\"%s\"", path, strerror(errno));
        return KILN_EIO;
    }
    img_fd = fd;
    img_end = 0;
    snprintf(img_dir, sizeof img_dir, "%s", data_dir);
    LOG_INFO("image pack opened path=%s", path);
    return KILN_OK;
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

kiln_status cons_image_save(const char *data_dir, const unsigned char *bytes, size_t len,
                            cons_image *img)
{
    kiln_status st = KILN_OK;
    pthread_mutex_lock(&img_mu);
    if (img_fd >= 0 && (img_end + len > img_pack_max || strcmp(img_dir, data_dir) != 0))
        img_close_pack();
    if (img_fd < 0) st = img_open_pack(data_dir);
    if (st == KILN_OK) {
        st = img_write_at(img_fd, bytes, len, img_end);
        if (st == KILN_OK) {
            snprintf(img->pack, sizeof img->pack, "%s", img_pack);
            img->offset = img_end;
            img->size_bytes = len;
            img_end += len;
        } else {
            /* Maybe partly written: the next image goes to a new pack. */
            LOG_ERROR("image save failed pack=%s error=\"%s\"", img_pack, strerror(errno));
            img_close_pack();
        }
    }
    pthread_mutex_unlock(&img_mu);
    return st;
}

void cons_image_set_pack_max(uint64_t bytes)
{
    pthread_mutex_lock(&img_mu);
    img_pack_max = bytes > 0 ? bytes : IMG_PACK_MAX_BYTES;
    pthread_mutex_unlock(&img_mu);
}

void cons_image_close(void)
{
    pthread_mutex_lock(&img_mu);
    img_close_pack();
    pthread_mutex_unlock(&img_mu);
}
