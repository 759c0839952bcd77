/* images.h - GET /v1/jobs/{id}/images/{index}: the saved PNG of the caller's job. */
#ifndef GW_IMAGES_H
#define GW_IMAGES_H

#include "server.h"

void gw_images_init(const char *data_dir, int64_t store_timeout_ms);
void gw_images_get(gw_req *r);

#endif
