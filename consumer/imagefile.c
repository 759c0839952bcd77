/* imagefile.c - saves a generated image under <data_dir>/images/<id>/<index>.png:
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
#include "log.h"

#define IMG_PATH_MAX 4096

static kiln_status img_mkdir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST) return KILN_OK;
    LOG_ERROR("image mkdir failed path=%s error=\"%s\"", path, strerror(errno));
    return KILN_EIO;
}

/* Creates the job's directory; the parents only when they are missing (the
 * first image of the process, or someone removed them). */
static kiln_status img_make_job_dir(const char *data_dir, const char *dir)
{
    char images[IMG_PATH_MAX];
    if (mkdir(dir, 0755) == 0 || errno == EEXIST) return KILN_OK;
    if (errno != ENOENT) return img_mkdir(dir); /* logs the error */
    if (snprintf(images, sizeof images, "%s/images", data_dir) >= (int)sizeof images)
        return KILN_EINVAL;
    kiln_status st = img_mkdir(data_dir);
    if (st == KILN_OK) st = img_mkdir(images);
    if (st == KILN_OK) st = img_mkdir(dir);
    return st;
}

/* Opens the temp file; a missing job directory is created once. Images of a
 * job are saved in index order, so only index 0 expects a new directory. */
static int img_open_tmp(const char *data_dir, const char *dir, const char *tmp, unsigned index)
{
    int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
    if (index == 0 && img_make_job_dir(data_dir, dir) != KILN_OK) return -1;
    int fd = open(tmp, flags, 0644);
    if (fd < 0 && errno == ENOENT && index != 0 && img_make_job_dir(data_dir, dir) == KILN_OK)
        fd = open(tmp, flags, 0644);
    return fd;
}

kiln_status cons_image_save(const char *data_dir, const char *id, unsigned index,
                            const unsigned char *bytes, size_t len)
{
    kiln_status st = KILN_OK;
    char dir[IMG_PATH_MAX], path[IMG_PATH_MAX], tmp[IMG_PATH_MAX];
    int fd = -1;
    bool tmp_made = false;

    if (snprintf(dir, sizeof dir, "%s/images/%s", data_dir, id) >= (int)sizeof dir ||
        snprintf(path, sizeof path, "%s/%u.png", dir, index) >= (int)sizeof path ||
        snprintf(tmp, sizeof tmp, "%s/.%u.png.%ld.tmp", dir, index, (long)getpid()) >=
            (int)sizeof tmp)
        return KILN_EINVAL;

    fd = img_open_tmp(data_dir, dir, tmp, index);
    if (fd < 0) {
        st = KILN_EIO;
        goto out;
    }
    tmp_made = true;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, bytes + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            st = KILN_EIO;
            goto out;
        }
        off += (size_t)n;
    }
    if (close(fd) != 0) {
        fd = -1;
        st = KILN_EIO;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        st = KILN_EIO;
        goto out;
    }
    tmp_made = false;

out:
    if (st != KILN_OK)
        LOG_ERROR("image save failed path=%s error=\"%s\"", path, strerror(errno));
    if (fd >= 0) close(fd);
    if (tmp_made) unlink(tmp);
    return st;
}
