/* memwatch.c - memory-pressure brake for the fetch thread: while
 * /proc/meminfo's MemAvailable is below KILN_MIN_AVAILABLE_MEM the fetcher
 * takes no new jobs (in-flight ones go on). Fetch thread only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "cons.h"
#include "log.h"

#define MEM_CHECK_EVERY_MS 250
#define MEM_MEMINFO_MAX 8192 /* /proc/meminfo is ~1.5 KiB */

static uint64_t mem_floor;     /* bytes; 0 = off */
static bool mem_paused;
static int64_t mem_next_check; /* monotonic ms */
static const char *mem_path = "/proc/meminfo";

kiln_status cons_memwatch_parse_bytes(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {
        {"", 1},           {"b", 1},
        {"k", 1ULL << 10}, {"kb", 1ULL << 10}, {"kib", 1ULL << 10},
        {"m", 1ULL << 20}, {"mb", 1ULL << 20}, {"mib", 1ULL << 20},
        {"g", 1ULL << 30}, {"gb", 1ULL << 30}, {"gib", 1ULL << 30},
        {"t", 1ULL << 40}, {"tb", 1ULL << 40}, {"tib", 1ULL << 40},
    };
    uint64_t v = 0;
    size_t i = 0;
    if (s == NULL) return KILN_EINVAL;
    while (s[i] == ' ') i++;
    size_t d0 = i;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        if (v > (UINT64_MAX - 9) / 10) return KILN_EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (i == d0) return KILN_EINVAL;
    const char *suf = s + i;
    while (*suf == ' ') suf++;
    size_t slen = strlen(suf);
    while (slen > 0 && suf[slen - 1] == ' ') slen--;
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        if (strlen(units[u].suffix) != slen || strncasecmp(suf, units[u].suffix, slen) != 0)
            continue;
        if (v > UINT64_MAX / units[u].mult) return KILN_EINVAL;
        *out = v * units[u].mult;
        return KILN_OK;
    }
    return KILN_EINVAL;
}

kiln_status cons_memwatch_parse_meminfo(const char *text, uint64_t *avail_bytes)
{
    static const char key[] = "MemAvailable:";
    const char *p = strstr(text, key);
    if (p == NULL) return KILN_ENOTFOUND;
    p += sizeof key - 1;
    char *end = NULL;
    errno = 0;
    unsigned long long kb = strtoull(p, &end, 10);
    if (end == p || errno != 0) return KILN_EINVAL;
    while (*end == ' ') end++;
    /* The kernel always says kB (KiB). */
    if (strncmp(end, "kB", 2) != 0) return KILN_EINVAL;
    if (kb > UINT64_MAX / 1024) return KILN_EINVAL;
    *avail_bytes = (uint64_t)kb * 1024;
    return KILN_OK;
}

static kiln_status mem_read_available(uint64_t *avail)
{
    char buf[MEM_MEMINFO_MAX];
    FILE *f = fopen(mem_path, "re");
    if (f == NULL) return KILN_EIO;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return cons_memwatch_parse_meminfo(buf, avail);
}

void cons_memwatch_set_source(const char *path)
{
    mem_path = path != NULL ? path : "/proc/meminfo";
    mem_next_check = 0;
}

kiln_status cons_memwatch_init(const char *floor_text)
{
    uint64_t floor = 0, avail = 0;
    if (cons_memwatch_parse_bytes(floor_text, &floor) != KILN_OK) return KILN_EINVAL;
    mem_floor = floor;
    mem_paused = false;
    mem_next_check = 0;
    if (floor == 0) return KILN_OK;
    /* Fail at start-up, not silently later, when the floor cannot be watched. */
    if (mem_read_available(&avail) != KILN_OK) return KILN_EIO;
    LOG_INFO("memory floor set min_available_bytes=%llu available_bytes=%llu",
             (unsigned long long)floor, (unsigned long long)avail);
    return KILN_OK;
}

bool cons_memwatch_paused(void)
{
    uint64_t avail = 0;
    if (mem_floor == 0) return false;
    int64_t now = kiln_mono_ms();
    if (now < mem_next_check) return mem_paused;
    mem_next_check = now + MEM_CHECK_EVERY_MS;
    if (mem_read_available(&avail) != KILN_OK) return mem_paused; /* keep the last verdict */
    bool low = avail < mem_floor;
    if (low && !mem_paused) {
        LOG_WARN("fetching paused, low memory available_bytes=%llu min_available_bytes=%llu "
                 "in_flight=%lld",
                 (unsigned long long)avail, (unsigned long long)mem_floor,
                 (long long)cons_slots_used());
        kiln_metric_set(cons_g.m_mem_paused, 1);
    } else if (!low && mem_paused) {
        LOG_INFO("fetching resumed available_bytes=%llu min_available_bytes=%llu",
                 (unsigned long long)avail, (unsigned long long)mem_floor);
        kiln_metric_set(cons_g.m_mem_paused, 0);
    }
    mem_paused = low;
    return mem_paused;
}
