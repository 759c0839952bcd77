/* imagefile.c - saves a generated image durably under
 * <data_dir>/images/<id>/<index>.png: temp file, fsync, rename, fsync dir. */
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

static kiln_status img_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return KILN_EIO;
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? KILN_OK : KILN_EIO;
}

kiln_status cons_image_save(const char *data_dir, const char *id, unsigned index,
                            const unsigned char *bytes, size_t len)
{
    kiln_status st = KILN_OK;
    char dir[IMG_PATH_MAX], path[IMG_PATH_MAX], tmp[IMG_PATH_MAX];
    int fd = -1;
    bool tmp_made = false;

    if (snprintf(dir, sizeof dir, "%s/images", data_dir) >= (int)sizeof dir) return KILN_EINVAL;
    st = img_mkdir(data_dir);
    if (st == KILN_OK) st = img_mkdir(dir);
    if (st != KILN_OK) return st;
    if (snprintf(dir, sizeof dir, "%s/images/%s", data_dir, id) >= (int)sizeof dir ||
        snprintf(path, sizeof path, "%s/%u.png", dir, index) >= (int)sizeof path ||
        snprintf(tmp, sizeof tmp, "%s/.%u.png.%ld.tmp", dir, index, (long)getpid()) >=
            (int)sizeof tmp)
        return KILN_EINVAL;
    st = img_mkdir(dir);
    if (st != KILN_OK) return st;

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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
    if (fsync(fd) != 0) {
        st = KILN_EIO;
        goto out;
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
    /* The rename itself must survive a crash too. */
    st = img_fsync_dir(dir);

out:
    if (st != KILN_OK)
        LOG_ERROR("image save failed path=%s error=\"%s\"", path, strerror(errno));
    if (fd >= 0) close(fd);
    if (tmp_made) unlink(tmp);
    return st;
}
