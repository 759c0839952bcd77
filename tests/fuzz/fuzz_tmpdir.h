/* fuzz_tmpdir.h - a fuzz target's scratch directory: made once, removed with
 * everything in it when the fuzzer exits. */
#ifndef KILN_FUZZ_TMPDIR_H
#define KILN_FUZZ_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* $TMPDIR/kiln-fuzz-<name>.XXXXXX (TMPDIR: /tmp when unset or too long),
 * made on the first call; NULL on failure. A fuzzer stopped by a finding
 * exits without atexit: run.sh points TMPDIR into a dir it removes. */
static inline const char *fz_tmpdir(const char *name)
{
    if (fz_tmpdir_path[0] != '\0') return fz_tmpdir_path;
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] == '\0' || strlen(tmp) > 32) tmp = "/tmp";
    snprintf(fz_tmpdir_path, sizeof fz_tmpdir_path, "%s/kiln-fuzz-%s.XXXXXX", tmp, name);
    if (mkdtemp(fz_tmpdir_path) == NULL) {
        fz_tmpdir_path[0] = '\0';
        return NULL;
    }
    atexit(fz_tmpdir_remove);
    return fz_tmpdir_path;
}

#endif
