/* test_consumer_retention.c - saved images go after KILN_RESULT_TTL
 * (consumer/retention.c): which files a sweep removes, judged by their last
 * write, in a real temporary directory; and a pack left idle is never
 * appended to again (consumer/imagefile.c). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../consumer/cons.h"
#include "clock.h"
#include "ut_tmpdir.h"

#define MIN_MS (60LL * 1000)
#define HOUR_MS (60 * MIN_MS)

static char rdir[64];

static void rdir_setup(void)
{
    cr_assert_eq(ut_tmpdir_make(rdir, sizeof rdir, "kiln-ut-imgret"), 0);
}

static void rdir_teardown(void)
{
    cr_assert_eq(ut_tmpdir_remove(rdir), 0);
}

TestSuite(image_retention, .init = rdir_setup, .fini = rdir_teardown);

static void mkdir_in(const char *rel)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", rdir, rel);
    cr_assert_eq(mkdir(path, 0755), 0, "mkdir %s", path);
}

/* Makes rdir/rel (a file, or a directory when dir) last written at mtime_ms. */
static void make_at(const char *rel, int64_t mtime_ms, int dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", rdir, rel);
    if (dir) {
        cr_assert_eq(mkdir(path, 0755), 0);
    } else {
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f, "create %s", path);
        fputs("image bytes", f);
        fclose(f);
    }
    struct timespec ts[2];
    ts[0].tv_sec = ts[1].tv_sec = (time_t)(mtime_ms / 1000);
    ts[0].tv_nsec = ts[1].tv_nsec = (long)(mtime_ms % 1000) * 1000000L;
    cr_assert_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static int present(const char *rel)
{
    char path[256];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", rdir, rel);
    return stat(path, &sb) == 0;
}

static size_t sweep(int64_t ttl_ms, int64_t now_ms)
{
    size_t removed = 99;
    cr_assert_eq(cons_retention_sweep(rdir, ttl_ms, now_ms, &removed), KILN_OK);
    return removed;
}

Test(image_retention, files_last_written_before_ttl_and_margin_go)
{
    int64_t now = kiln_now_ms(), ttl = 10 * MIN_MS; /* margin = ttl under an hour */
    int64_t cutoff = now - 2 * ttl;
    mkdir_in("images");
    mkdir_in("images/packs");
    mkdir_in("images/3f");
    mkdir_in("images/zz");
    make_at("images/packs/old.pack", cutoff - 1000, 0);
    make_at("images/packs/edge.pack", cutoff + 1000, 0);
    make_at("images/packs/fresh.pack", now, 0);
    make_at("images/packs/notes.txt", cutoff - 1000, 0);   /* not a pack */
    make_at("images/packs/dir.pack", cutoff - 1000, 1);    /* not a regular file */
    make_at("images/3f/old-job.0.png", cutoff - 1000, 0);  /* saved before packs */
    make_at("images/3f/new-job.0.png", now, 0);
    make_at("images/zz/old-job.0.png", cutoff - 1000, 0);  /* not a shard */

    cr_assert_eq(sweep(ttl, now), 2);
    cr_assert(!present("images/packs/old.pack"));
    cr_assert(!present("images/3f/old-job.0.png"));
    cr_assert(present("images/packs/edge.pack"), "a second inside the margin");
    cr_assert(present("images/packs/fresh.pack"));
    cr_assert(present("images/packs/notes.txt"));
    cr_assert(present("images/packs/dir.pack"));
    cr_assert(present("images/3f/new-job.0.png"));
    cr_assert(present("images/zz/old-job.0.png"));

    cr_assert_eq(sweep(ttl, now + 2000), 1, "edge.pack's turn");
    cr_assert(!present("images/packs/edge.pack"));
}

Test(image_retention, the_margin_is_at_most_an_hour)
{
    int64_t now = kiln_now_ms(), ttl = 10 * HOUR_MS;
    mkdir_in("images");
    mkdir_in("images/packs");
    make_at("images/packs/a.pack", now - ttl - HOUR_MS - 1000, 0);
    make_at("images/packs/b.pack", now - ttl - HOUR_MS + 1000, 0);
    cr_assert_eq(sweep(ttl, now), 1);
    cr_assert(!present("images/packs/a.pack"));
    cr_assert(present("images/packs/b.pack"));
}

Test(image_retention, no_images_yet_is_fine)
{
    cr_assert_eq(sweep(HOUR_MS, kiln_now_ms()), 0);
}

/* A pack idle for the roll time is left: the next save starts a new one. */
Test(image_retention, an_idle_pack_is_never_appended_to_again)
{
    unsigned char a[8] = "aaaaaaa", b[8] = "bbbbbbb", c[8] = "ccccccc";
    cons_image ia = {0}, ib = {0}, ic = {0};
    cons_image_set_roll_after(200);
    cr_assert_eq(cons_image_save(rdir, a, sizeof a, &ia), KILN_OK);
    int64_t saved = kiln_mono_ms();
    cr_assert_eq(cons_image_save(rdir, b, sizeof b, &ib), KILN_OK);
    int64_t saved_b = kiln_mono_ms();
    /* Wait out the idle time itself (the condition is the clock). */
    while (kiln_mono_ms() - saved_b < 210) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(cons_image_save(rdir, c, sizeof c, &ic), KILN_OK);
    cons_image_close();
    cons_image_set_roll_after(0);
    if (saved_b - saved < 200) cr_assert_str_eq(ia.pack, ib.pack, "saved back to back: one pack");
    cr_assert_str_neq(ic.pack, ib.pack, "idle 200 ms: a new pack");
    cr_assert_eq(ic.offset, 0);
}
