/* images.c - GET /v1/jobs/{id}/images/{index}: checks with the store that the
 * job is the caller's, then serves the file at kiln_image_path (common/imagepath.h).
 * The id was checked against [A-Za-z0-9_-]{1,64} and index is one digit 0-3,
 * so the path cannot leave the images directory. */
#include <fcntl.h>
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

static void images_serve(gw_req *r)
{
    char path[4096];
    if (kiln_image_path(path, sizeof path, images_dir, r->job_id, (unsigned)r->image_index) !=
        KILN_OK) {
        gw_answer_error(&r->ans, "not_found", "no such image", NULL);
        return;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        gw_answer_error(&r->ans, "not_found", "no such image", NULL);
        return;
    }
    gw_answer_reset(&r->ans);
    r->ans.status = 200;
    r->ans.ctype = "image/png";
    r->ans.fd = fd;
    r->ans.fd_size = (uint64_t)sb.st_size;
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
        images_serve(r);
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
