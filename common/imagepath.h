/* imagepath.h - where saved images live on disk, shared by the consumer
 * (writer) and the gateway (reader):
 *
 *     <data_dir>/images/packs/<pack>                 images saved now
 *     <data_dir>/images/<shard>/<id>.<index>.png     images saved before packs
 *
 * A pack is a file that one consumer process appends images to (its name
 * and the image's offset and size are in the job's record, ImageBlob). A
 * file per image cost an inode and a directory entry each: 43-92 us of CPU
 * per image on this machine's ext4, against ~4 us for an append. The per-image
 * files of earlier versions are still served (<shard> is two hex digits
 * from a hash of the job id). */
#ifndef KILN_IMAGEPATH_H
#define KILN_IMAGEPATH_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

/* Writes <data_dir>/images/<shard> into buf. KILN_EINVAL if it does not fit. */
kiln_status kiln_image_dir(char *buf, size_t cap, const char *data_dir, const char *id);

/* Writes the image's full path into buf. KILN_EINVAL if it does not fit. */
kiln_status kiln_image_path(char *buf, size_t cap, const char *data_dir, const char *id,
                            unsigned index);

#define KILN_PACK_NAME_MAX 64 /* "<uuid7>.pack" and its NUL fit */

/* Whether name is a pack file name: [A-Za-z0-9_-]{1,58} then ".pack" (so a
 * path built from it cannot leave the packs directory). */
bool kiln_image_pack_name_ok(const char *name);

/* Writes <data_dir>/images/packs into buf. KILN_EINVAL if it does not fit. */
kiln_status kiln_image_packs_dir(char *buf, size_t cap, const char *data_dir);

/* Writes the pack's full path into buf. KILN_EINVAL if name is not a pack
 * name or the path does not fit. */
kiln_status kiln_image_pack_path(char *buf, size_t cap, const char *data_dir, const char *name);

#endif
