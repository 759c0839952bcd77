/* retention.c - removes saved images once the jobs they belong to are gone
 * from the store (KILN_RESULT_TTL after they ended).
 *
 * A file is judged by its last write: every image in a pack was written
 * before the pack's mtime, and its job ended right after its image was
 * written, so once mtime + ttl has passed the store has removed (or is
 * about to remove) every record that names the file. A margin of
 * min(ttl, 1 h) covers the store's pass interval and clock skew between
 * hosts. Nobody appends to such a pack again: a writer leaves a pack idle
 * for min(ttl/2, 10 min) (imagefile.c), well before it could look old here,
 * and leaves it after 10 min even with retention off, for the sake of
 * other consumers sharing the directory with a TTL of their own. The
 * per-image files of earlier versions (<shard>/<id>.<index>.png) go by the
 * same rule. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "cons.h"
#include "imagepath.h"
#include "log.h"
#include "metrics.h"
#include "periodic.h"
#include "subjects.h"

#define RET_MARGIN_MAX_MS (3600LL * 1000)
/* A pack idle this long (or ttl/2 if shorter) is left for a new one. */
#define RET_ROLL_MAX_MS (10 * 60 * 1000)

/* The store's KILN_RESULT_TTL is asked every RET_TTL_ASK_MS until it
 * answers (it may start after the consumer), then every
 * RET_TTL_ASK_MS * RET_TTL_RECHECK_TICKS (a minute). ret_* below: the
 * check thread only. */
#define RET_TTL_ASK_MS 5000
#define RET_TTL_RECHECK_TICKS 12
#define RET_TTL_ASK_TIMEOUT_MS 1000

static kiln_periodic *ret_timer, *ret_check_timer;
static kiln_metric *ret_m_removed;
static int64_t ret_reported_store_ttl = -1; /* the store TTL last reported on */
static bool ret_store_answered;
static unsigned ret_check_ticks;

static bool ret_is_shard(const char *name)
{
    return strlen(name) == 2 && strspn(name, "0123456789abcdef") == 2;
}

static bool ret_is_legacy_image(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".png") == 0;
}

/* Removes the regular files of dir that name_ok accepts and that were last
 * written at or before cutoff_ms. */
static kiln_status ret_sweep_dir(const char *dir, bool (*name_ok)(const char *),
                                 int64_t cutoff_ms, size_t *removed)
{
    DIR *d = opendir(dir);
    if (d == NULL) return errno == ENOENT ? KILN_OK : KILN_EIO;
    int dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        if (!name_ok(e->d_name) || fstatat(dfd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(sb.st_mode))
            continue;
        int64_t mtime_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
        if (mtime_ms > cutoff_ms) continue;
        if (unlinkat(dfd, e->d_name, 0) == 0) {
            (*removed)++;
            LOG_DEBUG("image file expired dir=%s name=%s", dir, e->d_name);
        } else if (errno != ENOENT) {
            LOG_WARN("image file removal failed dir=%s name=%s error=\"%s\"", dir, e->d_name,
                     strerror(errno));
        }
    }
    closedir(d);
    return KILN_OK;
}

kiln_status cons_retention_sweep(const char *data_dir, int64_t ttl_ms, int64_t now_ms,
                                 size_t *removed)
{
    char images[4096], sub[4096];
    *removed = 0;
    if (ttl_ms <= 0) return KILN_EINVAL;
    int64_t margin = ttl_ms < RET_MARGIN_MAX_MS ? ttl_ms : RET_MARGIN_MAX_MS;
    int64_t cutoff = now_ms - ttl_ms - margin;
    if (snprintf(images, sizeof images, "%s/images", data_dir) >= (int)sizeof images ||
        kiln_image_packs_dir(sub, sizeof sub, data_dir) != KILN_OK)
        return KILN_EINVAL;
    kiln_status st = ret_sweep_dir(sub, kiln_image_pack_name_ok, cutoff, removed);

    DIR *d = opendir(images);
    if (d == NULL) return errno == ENOENT ? st : KILN_EIO;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ret_is_shard(e->d_name)) continue;
        if (snprintf(sub, sizeof sub, "%s/%s", images, e->d_name) >= (int)sizeof sub) continue;
        kiln_status s2 = ret_sweep_dir(sub, ret_is_legacy_image, cutoff, removed);
        if (st == KILN_OK) st = s2;
    }
    closedir(d);
    return st;
}

static void ret_tick(kiln_periodic *p, void *arg)
{
    (void)p;
    (void)arg;
    size_t removed = 0;
    kiln_status st = cons_retention_sweep(cons_g.set->data_dir, cons_g.set->result_ttl_ms,
                                          kiln_now_ms(), &removed);
    if (st != KILN_OK) LOG_WARN("image retention sweep incomplete status=%s", kiln_status_str(st));
    kiln_metric_add(ret_m_removed, (int64_t)removed);
    if (removed > 0) LOG_INFO("image files expired count=%zu", removed);
}

/* Asks the store for its KILN_RESULT_TTL and warns (once per value) when it
 * is not this consumer's: images would then go before their records or
 * outlive them. No answer, or a store too old to tell, says nothing. */
static void ret_check_store_ttl(void)
{
    Kiln__V1__StoreReply *rep = NULL;
    kiln_status st = cons_store_ask(KILN_SUBJ_STORE_PING, NULL, 0, RET_TTL_ASK_TIMEOUT_MS, &rep);
    if (st != KILN_OK && st != KILN_EUNAVAILABLE) {
        LOG_DEBUG("store did not answer the TTL check status=%s", kiln_status_str(st));
        return;
    }
    ret_store_answered = true;
    if (rep == NULL || !rep->reports_result_ttl) goto out;
    int64_t own = cons_g.set->result_ttl_ms, store = rep->result_ttl_ms;
    if (own == store && store != ret_reported_store_ttl)
        LOG_INFO("KILN_RESULT_TTL matches the store's ttl_ms=%lld", (long long)store);
    if (own != store && store != ret_reported_store_ttl) {
        LOG_WARN("KILN_RESULT_TTL differs from the store's: images %s their job records; set "
                 "the same value on both consumer_ttl_ms=%lld store_ttl_ms=%lld",
                 own != 0 && (store == 0 || own < store) ? "go before" : "outlive",
                 (long long)own, (long long)store);
    }
    ret_reported_store_ttl = store; /* said once per store value */
out:
    if (rep != NULL) kiln__v1__store_reply__free_unpacked(rep, NULL);
}

static void ret_check_tick(kiln_periodic *p, void *arg)
{
    (void)p;
    (void)arg;
    if (ret_store_answered && ++ret_check_ticks % RET_TTL_RECHECK_TICKS != 0) return;
    ret_check_store_ttl();
}

kiln_status cons_retention_start(void)
{
    /* The first ask comes one interval after start: never hold the start up. */
    if (kiln_periodic_start("kiln-ttl-check", RET_TTL_ASK_MS, ret_check_tick, NULL,
                            &ret_check_timer) != KILN_OK)
        return KILN_ERR;
    int64_t ttl = cons_g.set->result_ttl_ms;
    /* Also without retention of its own: another consumer sharing the
     * directory may remove packs idle for its own ttl + margin. */
    int64_t roll = ttl > 0 && ttl / 2 < RET_ROLL_MAX_MS ? ttl / 2 : RET_ROLL_MAX_MS;
    cons_image_set_roll_after(roll > 0 ? roll : 1);
    if (ttl <= 0) {
        LOG_INFO("image retention off: images are kept for ever");
        return KILN_OK;
    }
    ret_m_removed = kiln_metric_counter("kiln_consumer_image_files_expired_total",
                                        "image packs and files removed after KILN_RESULT_TTL");
    int64_t interval = kiln_periodic_retention_ms(ttl);
    if (kiln_periodic_start("kiln-img-ttl", interval, ret_tick, NULL, &ret_timer) != KILN_OK)
        return KILN_ERR;
    LOG_INFO("image retention started ttl_ms=%lld interval_ms=%lld", (long long)ttl,
             (long long)interval);
    return KILN_OK;
}

void cons_retention_stop(void)
{
    kiln_periodic_stop(ret_check_timer);
    ret_check_timer = NULL;
    kiln_periodic_stop(ret_timer);
    ret_timer = NULL;
}
