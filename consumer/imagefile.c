/* imagefile.c - saves a generated image at its kiln_image_path (common/imagepath.h):
 * temp file, then rename, so a reader never sees a partial file. No fsync:
 * like nats-server 2.9.10 itself (which does not fsync per message), a saved
 * image survives a process crash but not a power loss (README, "Durability, honestly"). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cons.h"
#include "imagepath.h"
#include "log.h"

#define IMG_PATH_MAX 4096

/* Makes temp names unique within the process: two transfer threads may save
 * the same id and index at once (a redelivered copy running beside the first). */
static atomic_ulong img_tmp_seq;

static kiln_status img_mkdir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST) return KILN_OK;
    LOG_ERROR("image mkdir failed path=%s error=\"%s\"", path, strerror(errno));
    return KILN_EIO;
}

/* Makes <data_dir>/images/<shard> and its parents. Called only when an open
 * found the shard missing: once per shard for the life of the data dir. */
static kiln_status img_make_shard_dir(const char *data_dir, const char *shard_dir)
{
    char images[IMG_PATH_MAX];
    if (snprintf(images, sizeof images, "%s/images", data_dir) >= (int)sizeof images)
        return KILN_EINVAL;
    kiln_status st = img_mkdir(data_dir);
    if (st == KILN_OK) st = img_mkdir(images);
    if (st == KILN_OK) st = img_mkdir(shard_dir);
    return st;
}

static int img_open_tmp(const char *data_dir, const char *shard_dir, const char *tmp)
{
    int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
    int fd = open(tmp, flags, 0644);
    if (fd < 0 && errno == ENOENT && img_make_shard_dir(data_dir, shard_dir) == KILN_OK)
        fd = open(tmp, flags, 0644);
    return fd;
}

static kiln_status img_write_all(int fd, const unsigned char *bytes, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, bytes + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return KILN_EIO;
        off += (size_t)n;
    }
    return KILN_OK;
}

kiln_status cons_image_save(const char *data_dir, const char *id, unsigned index,
                            const unsigned char *bytes, size_t len)
{
    char dir[IMG_PATH_MAX], path[IMG_PATH_MAX], tmp[IMG_PATH_MAX];
    if (kiln_image_dir(dir, sizeof dir, data_dir, id) != KILN_OK ||
        kiln_image_path(path, sizeof path, data_dir, id, index) != KILN_OK ||
        snprintf(tmp, sizeof tmp, "%s/.%s.%u.%ld.%lu.tmp", dir, id, index, (long)getpid(),
                 atomic_fetch_add_explicit(&img_tmp_seq, 1, memory_order_relaxed)) >=
            (int)sizeof tmp)
        return KILN_EINVAL;

    int fd = img_open_tmp(data_dir, dir, tmp);
    if (fd < 0) {
        LOG_ERROR("image save failed path=%s error=\"%s\"", tmp, strerror(errno));
        return KILN_EIO;
    }
    kiln_status st = img_write_all(fd, bytes, len);
    if (close(fd) != 0) st = KILN_EIO;
    if (st == KILN_OK && rename(tmp, path) != 0) st = KILN_EIO;
    if (st != KILN_OK) {
        LOG_ERROR("image save failed path=%s error=\"%s\"", path, strerror(errno));
        unlink(tmp);
    }
    return st;
}
