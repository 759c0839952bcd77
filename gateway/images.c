/* images.c - GET /v1/jobs/{id}/images/{index}: checks with the store that the
 * job is the caller's, then serves the image's bytes from the pack its record
 * names, or from its own file when it was saved before packs (common/imagepath.h).
 * The id was checked against [A-Za-z0-9_-]{1,64}, index is one digit 0-3 and
 * a pack name is checked by kiln_image_pack_path, so no path can leave the
 * images directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "imagepath.h"
#include "images.h"
#include "log.h"
#include "query.h"
#include "rpc.h"
#include "subjects.h"

static const char *images_dir = "./var";
static int64_t images_timeout_ms = 2000;

void gw_images_init(const char *data_dir, int64_t store_timeout_ms)
{
    images_dir = data_dir;
    images_timeout_ms = store_timeout_ms;
}

/* Opens a regular file: the fd and its size, or -1. */
static int images_open(const char *path, uint64_t *file_size)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return -1;
    }
    *file_size = (uint64_t)sb.st_size;
    return fd;
}

/* The image's bytes: its range of a pack (rec's ImageBlob for the index),
 * or, for an image saved before packs, its own file. */
static void images_serve(gw_req *r, const Kiln__V1__JobRecord *rec)
{
    char path[4096];
    uint64_t file_size = 0, offset = 0, size = 0;
    const Kiln__V1__ImageBlob *blob = NULL;
    for (size_t i = 0; i < rec->n_blobs; i++)
        if (rec->blobs[i]->index == (uint32_t)r->image_index) blob = rec->blobs[i];
    kiln_status st = blob != NULL
                         ? kiln_image_pack_path(path, sizeof path, images_dir, blob->pack)
                         : kiln_image_path(path, sizeof path, images_dir, r->job_id,
                                           (unsigned)r->image_index);
    int fd = st == KILN_OK ? images_open(path, &file_size) : -1;
    bool gone = st == KILN_OK && fd < 0 && errno == ENOENT; /* expired (KILN_RESULT_TTL) */
    if (fd >= 0 && blob == NULL) size = file_size;
    if (fd >= 0 && blob != NULL) {
        offset = blob->offset;
        size = blob->size;
        if (offset > file_size || size > file_size - offset) { /* a pack cut short */
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        if (blob != NULL && gone) LOG_DEBUG("image pack gone job=%s pack=%s", r->job_id, blob->pack);
        else if (blob != NULL) LOG_WARN("image pack unreadable job=%s pack=%s", r->job_id, blob->pack);
        gw_answer_error(&r->ans, "not_found", "no such image", NULL);
        return;
    }
    gw_answer_reset(&r->ans);
    r->ans.status = 200;
    r->ans.ctype = "image/png";
    r->ans.fd = fd;
    r->ans.fd_offset = offset;
    r->ans.fd_size = size;
    gw_answer_header(&r->ans, "Cache-Control", "private, max-age=86400");
}

static void images_done(gw_req *r, kiln_status st, natsMsg *reply)
{
    Kiln__V1__StoreReply *rep = st == KILN_OK ? gw_rpc_store_reply(reply) : NULL;
    if (rep == NULL || (rep->error_code != NULL && rep->error_code[0] != '\0')) {
        gw_query_answer_store_error(r, rep == NULL ? KILN_ERR : KILN_OK,
                                    rep != NULL ? rep->error_code : NULL,
                                    rep != NULL ? rep->error_message : NULL);
    } else if (rep->n_jobs < 1) {
        gw_answer_error(&r->ans, "not_found", "no such job", NULL);
    } else {
        images_serve(r, rep->jobs[0]);
    }
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
    gw_server_resume(r);
}

void gw_images_get(gw_req *r)
{
    Kiln__V1__StoreRequest req = KILN__V1__STORE_REQUEST__INIT;
    req.user_id = r->user;
    req.id = r->job_id;
    gw_server_suspend(r);
    kiln_status st = gw_rpc_store(KILN_SUBJ_STORE_GET, &req, images_timeout_ms, images_done, r);
    if (st != KILN_OK) {
        gw_query_answer_store_error(r, st, NULL, NULL);
        gw_server_resume(r);
    }
}
