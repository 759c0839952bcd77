/* imagepath.h - where a saved image lives on disk, shared by the consumer
 * (writer) and the gateway (reader):
 *
 *     <data_dir>/images/<shard>/<id>.<index>.png
 *
 * <shard> is two hex digits from a hash of the job id. One directory per job
 * would cost a mkdir (an inode allocation) per job; 256 shard directories are
 * made once and keep each directory small enough to list. */
#ifndef KILN_IMAGEPATH_H
#define KILN_IMAGEPATH_H

#include <stddef.h>

#include "status.h"

/* Writes <data_dir>/images/<shard> into buf. KILN_EINVAL if it does not fit. */
kiln_status kiln_image_dir(char *buf, size_t cap, const char *data_dir, const char *id);

/* Writes the image's full path into buf. KILN_EINVAL if it does not fit. */
kiln_status kiln_image_path(char *buf, size_t cap, const char *data_dir, const char *id,
                            unsigned index);

#endif
