/* test_imagepath.c - the on-disk image layout shared by consumer and gateway. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "imagepath.h"

Test(imagepath, path_is_shard_then_id_and_index)
{
    char dir[256], path[256];
    cr_assert_eq(kiln_image_dir(dir, sizeof dir, "/data", "job-1"), KILN_OK);
    cr_assert_eq(kiln_image_path(path, sizeof path, "/data", "job-1", 3), KILN_OK);
    cr_assert_eq(strncmp(dir, "/data/images/", 13), 0, "%s", dir);
    cr_assert_eq(strlen(dir), 15, "two hex digits of shard: %s", dir);
    char want[300];
    snprintf(want, sizeof want, "%s/job-1.3.png", dir);
    cr_assert_str_eq(path, want);
}

Test(imagepath, ids_spread_over_many_shards)
{
    bool seen[256] = {0};
    int distinct = 0;
    for (int i = 0; i < 4096; i++) {
        char id[64], dir[64];
        snprintf(id, sizeof id, "019ab3c4-5d6e-7f80-9a1b-%012x", i);
        cr_assert_eq(kiln_image_dir(dir, sizeof dir, "d", id), KILN_OK);
        unsigned shard;
        cr_assert_eq(sscanf(dir, "d/images/%2x", &shard), 1, "%s", dir);
        if (!seen[shard]) distinct++;
        seen[shard] = true;
    }
    cr_assert_geq(distinct, 250, "only %d shards used", distinct);
}

Test(imagepath, too_small_buffer_is_einval)
{
    char small[16];
    cr_assert_eq(kiln_image_path(small, sizeof small, "/a/long/data/dir", "job", 0), KILN_EINVAL);
    cr_assert_eq(kiln_image_dir(small, sizeof small, "/a/long/data/dir", "job"), KILN_EINVAL);
}

Test(imagepath, pack_names_cannot_leave_the_packs_directory)
{
    char path[256];
    cr_assert_eq(kiln_image_pack_path(path, sizeof path, "/data",
                                      "019ab3c4-5d6e-7f80-9a1b-000000000001.pack"),
                 KILN_OK);
    cr_assert_str_eq(path, "/data/images/packs/019ab3c4-5d6e-7f80-9a1b-000000000001.pack");
    const char *bad[] = {"",           ".pack",          "../x.pack",      "a/b.pack",
                         "x.png",      "x.pack/",        "x.pack.pack/..", "x y.pack",
                         "..pack",     NULL};
    for (size_t i = 0; bad[i] != NULL; i++)
        cr_assert_eq(kiln_image_pack_path(path, sizeof path, "/data", bad[i]), KILN_EINVAL,
                     "accepted '%s'", bad[i]);
    cr_assert_eq(kiln_image_pack_path(path, sizeof path, "/data", NULL), KILN_EINVAL);
    char long_name[80];
    memset(long_name, 'a', sizeof long_name);
    strcpy(long_name + 60, ".pack");
    cr_assert_eq(kiln_image_pack_path(path, sizeof path, "/data", long_name), KILN_EINVAL,
                 "a name of %zu characters", strlen(long_name));
    char small[24];
    cr_assert_eq(kiln_image_pack_path(small, sizeof small, "/data", "p.pack"), KILN_EINVAL);
}
