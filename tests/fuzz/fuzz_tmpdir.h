/* fuzz_tmpdir.h - a fuzz target's scratch directory: made once, removed with
 * everything in it when the fuzzer exits. */
#ifndef KILN_FUZZ_TMPDIR_H
#define KILN_FUZZ_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

static char fz_tmpdir_path[64];

static int fz_tmpdir_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fz_tmpdir_remove(void)
{
    if (fz_tmpdir_path[0] != '\0') nftw(fz_tmpdir_path, fz_tmpdir_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* /tmp/kiln-fuzz-<name>.XXXXXX, made on the first call; NULL on failure. */
static inline const char *fz_tmpdir(const char *name)
{
    if (fz_tmpdir_path[0] != '\0') return fz_tmpdir_path;
    snprintf(fz_tmpdir_path, sizeof fz_tmpdir_path, "/tmp/kiln-fuzz-%s.XXXXXX", name);
    if (mkdtemp(fz_tmpdir_path) == NULL) {
        fz_tmpdir_path[0] = '\0';
        return NULL;
    }
    atexit(fz_tmpdir_remove);
    return fz_tmpdir_path;
}

#endif
