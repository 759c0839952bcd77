/* fuzz_settings.c - the small text parsers of configuration and headers:
 * durations, rates, integers and booleans of every binary's settings
 * (common/config.c), KILN_API_KEYS (gateway/auth.c), Authorization,
 * Last-Event-ID, list cursors (store/keys.c), Retry-After and memory sizes
 * (consumer), the dev provider's sizes and image file names, the
 * JobRequest field rules, and NATS server lists (check, and redaction for
 * logs). Input: one byte choosing the parser, then the text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/auth.h"
#include "config.h"
#include "../../consumer/cons.h"
#include "fuzz_input.h"
#include "../../devprovider/images.h"
#include "jobreq.h"
#include "natsconn.h"
#include "../../store/keys.h"
#include "pb.h"
#include "../../gateway/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fail(const char *what, const char *text)
{
    fprintf(stderr, "fuzz_settings: %s: '%s'\n", what, text);
    abort();
}

/* An accepted KILN_API_KEYS: its first entry's token authenticates as that
 * entry's user. */
static void fuzz_auth(const char *text)
{
    char err[256] = "";
    kiln_status st = gw_auth_init(text, err, sizeof err);
    if (st != KILN_OK) {
        if (err[0] == '\0') fuzz_fail("KILN_API_KEYS rejected without a message", text);
        return;
    }
    size_t len = strcspn(text, ",");
    while (len > 0 && (*text == ' ' || *text == '\t')) text++, len--;
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\t')) len--;
    const char *colon = memchr(text, ':', len);
    if (colon == NULL) fuzz_fail("KILN_API_KEYS accepted with an entry without ':'", text);
    char header[GW_AUTH_TOKEN_MAX + 16], want[KILN_USER_MAX_LEN + 1];
    const char *user = NULL;
    snprintf(header, sizeof header, "Bearer %.*s", (int)(colon - text), text);
    snprintf(want, sizeof want, "%.*s", (int)(len - (size_t)(colon - text) - 1), colon + 1);
    if (gw_auth_check_header(header, &user) < 0 || user == NULL || strcmp(user, want) != 0)
        fuzz_fail("the first token of an accepted KILN_API_KEYS does not authenticate as its user",
                  text);
    gw_auth_free();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    char *text = malloc(size);
    if (text == NULL) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    int64_t i64;
    double d;
    bool b;
    uint64_t u64;
    unsigned w, h;
    uint8_t key[KEYS_MAX];
    size_t klen;
    Kiln__V1__JobState state;
    Kiln__V1__Priority prio;
    int valid;

    switch (data[0] % 17) {
    case 0: (void)kiln_config_parse_duration_ms(text, &i64); break;
    case 1:
        if (kiln_config_parse_rate(text, &d) == KILN_OK && !(d >= 0))
            fuzz_fail("a rate parsed as negative or NaN", text);
        break;
    case 2: (void)kiln_config_parse_int(text, &i64); break;
    case 3: (void)kiln_config_parse_bool(text, &b); break;
    case 4: fuzz_auth(text); break;
    case 5: {
        const char *user = NULL;
        char err[128];
        if (gw_auth_init("dev-token:dev,t2:u2", err, sizeof err) != KILN_OK)
            fuzz_fail("the fixed KILN_API_KEYS is rejected", err);
        (void)gw_auth_check_header(text, &user);
        gw_auth_free();
        break;
    }
    case 6: (void)gw_sse_parse_last_id(text, &u64); break;
    case 7:
        if (keys_hex_decode(text, key, &klen) == KILN_OK && klen > KEYS_MAX)
            fuzz_fail("a cursor decoded past its buffer", text);
        break;
    case 8: (void)openai_parse_retry_after(text, size - 1); break;
    case 9: (void)cons_memwatch_parse_bytes(text, &u64); break;
    case 10:
        if (dev_images_parse_size(text, &w, &h) == KILN_OK &&
            (w < 1 || h < 1 || w > DEV_SIZE_MAX || h > DEV_SIZE_MAX))
            fuzz_fail("a size outside 1..DEV_SIZE_MAX accepted", text);
        break;
    case 11: (void)dev_images_file_parse(text, &u64, &w, &h); break;
    case 12:
        (void)kiln_jobreq_id_ok(text);
        (void)kiln_jobreq_size_ok(text);
        (void)kiln_idem_key_ok(text);
        break;
    case 13: (void)kiln_utf8_chars(text, &valid); break;
    case 14: (void)kiln_state_parse(text, &state); break;
    case 15: (void)kiln_priority_parse(text, &prio); break;
    default: {
        char why[160], shown[64];
        (void)kiln_nats_urls_check(text, why, sizeof why);
        kiln_nats_urls_redact(text, shown, sizeof shown);
        /* Whatever the list, no user or password is left in the log form. */
        for (const char *at = strchr(shown, '@'); at != NULL; at = strchr(at + 1, '@'))
            if (at - shown < 3 || memcmp(at - 3, "***", 3) != 0)
                fuzz_fail("a redacted server list still shows a user", text);
        break;
    }
    }
    free(text);
    return 0;
}
