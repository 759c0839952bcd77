/* test_log.c - unit tests for common/log.c: line format and level filtering. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "status.h"

static void redirect(void) { cr_redirect_stderr(); }

Test(log, line_format_and_levels, .init = redirect)
{
    kiln_log_init("store");
    cr_assert_eq(kiln_log_set_level("warn"), KILN_OK);
    cr_assert_eq(kiln_log_set_level("verbose"), KILN_EINVAL);
    cr_assert_eq(kiln_log_min_level, KILN_LOG_WARN);
    LOG_INFO("hidden job=%s", "x");
    LOG_WARN("shown job=%s attempt=%d", "abc", 2);
    LOG_ERROR("two\nlines");
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    cr_assert(strstr(text, "hidden") == NULL, "%s", text);
    /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=warn comp=store shown job=abc attempt=2 */
    cr_assert(strncmp(text, "ts=", 3) == 0, "%s", text);
    cr_assert_eq(text[3 + 24], ' ', "%s", text);
    cr_assert_eq(text[3 + 23], 'Z', "%s", text);
    cr_assert(strncmp(text + 28, "level=warn comp=store shown job=abc attempt=2\n", 46) == 0, "%s",
              text);
    cr_assert(strstr(text, "level=error comp=store two lines\n") != NULL, "%s", text);
}

Test(log, long_line_truncated_to_one_line, .init = redirect)
{
    kiln_log_init("t");
    kiln_log_set_level("debug");
    static char big[10000];
    memset(big, 'a', sizeof big - 1);
    LOG_DEBUG("%s", big);
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    static char text[20000];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    cr_assert(n > 1000 && n <= 4096, "n=%zu", n);
    cr_assert_eq(text[n - 1], '\n');
    cr_assert(strstr(text, "...\n") != NULL);
    cr_assert_eq(strchr(text, '\n'), text + n - 1);
}
