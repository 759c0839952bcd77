/* imagepath.c - the on-disk layout of saved images (see imagepath.h). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "imagepath.h"

/* FNV-1a: ids are UUIDv7 (time first) or caller-chosen, so the shard comes
 * from every byte rather than a prefix. */
static unsigned image_shard(const char *id)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return (h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) & 0xffu;
}

kiln_status kiln_image_dir(char *buf, size_t cap, const char *data_dir, const char *id)
{
    int n = snprintf(buf, cap, "%s/images/%02x", data_dir, image_shard(id));
    return n < 0 || (size_t)n >= cap ? KILN_EINVAL : KILN_OK;
}

kiln_status kiln_image_path(char *buf, size_t cap, const char *data_dir, const char *id,
                            unsigned index)
{
    int n = snprintf(buf, cap, "%s/images/%02x/%s.%u.png", data_dir, image_shard(id), id, index);
    return n < 0 || (size_t)n >= cap ? KILN_EINVAL : KILN_OK;
}

bool kiln_image_pack_name_ok(const char *name)
{
    static const char suffix[] = ".pack";
    size_t n = name != NULL ? strlen(name) : 0;
    if (n <= sizeof suffix - 1 || n >= KILN_PACK_NAME_MAX ||
        strcmp(name + n - (sizeof suffix - 1), suffix) != 0)
        return false;
    for (size_t i = 0; i < n - (sizeof suffix - 1); i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

kiln_status kiln_image_packs_dir(char *buf, size_t cap, const char *data_dir)
{
    int n = snprintf(buf, cap, "%s/images/packs", data_dir);
    return n < 0 || (size_t)n >= cap ? KILN_EINVAL : KILN_OK;
}

kiln_status kiln_image_pack_path(char *buf, size_t cap, const char *data_dir, const char *name)
{
    if (!kiln_image_pack_name_ok(name)) return KILN_EINVAL;
    int n = snprintf(buf, cap, "%s/images/packs/%s", data_dir, name);
    return n < 0 || (size_t)n >= cap ? KILN_EINVAL : KILN_OK;
}
