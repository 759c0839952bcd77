/* ut_tmpdir.h - a unit test's scratch directory: made under /tmp, removed
 * with everything in it. */
#ifndef KILN_UT_TMPDIR_H
#define KILN_UT_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

static int ut_tmpdir_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Makes /tmp/<prefix>.XXXXXX into buf (len >= 64); 0 on success. */
static inline int ut_tmpdir_make(char *buf, size_t len, const char *prefix)
{
    snprintf(buf, len, "/tmp/%s.XXXXXX", prefix);
    return mkdtemp(buf) != NULL ? 0 : -1;
}

/* Removes path and everything below it; 0 on success. */
static inline int ut_tmpdir_remove(const char *path)
{
    return nftw(path, ut_tmpdir_rm, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
