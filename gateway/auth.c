/* auth.c - API keys (KILN_API_KEYS) and Bearer token authentication.
 *
 * Keys are kept as SHA-256 digests: comparing digests with CRYPTO_memcmp over
 * every key leaks neither a token's content nor its length through timing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "jobreq.h"
#include "sha256.h"

#define AUTH_DIGEST_LEN KILN_SHA256_LEN

typedef struct {
    unsigned char digest[AUTH_DIGEST_LEN];
    char *user;
} auth_key;

static auth_key *auth_keys;
static size_t auth_nkeys;

static int auth_digest(const char *s, size_t len, unsigned char out[AUTH_DIGEST_LEN])
{
    return kiln_sha256(s, len, out) == KILN_OK;
}

static int auth_visible(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

void gw_auth_free(void)
{
    for (size_t i = 0; i < auth_nkeys; i++) free(auth_keys[i].user);
    free(auth_keys);
    auth_keys = NULL;
    auth_nkeys = 0;
}

size_t gw_auth_count(void) { return auth_nkeys; }

kiln_status gw_auth_init(const char *spec, char *err, size_t errlen)
{
    kiln_status st = KILN_EINVAL;
    gw_auth_free();
    if (spec == NULL || spec[0] == '\0') {
        snprintf(err, errlen, "KILN_API_KEYS is empty: set it to token:user[,token:user...]");
        return KILN_EINVAL;
    }
    auth_keys = calloc(GW_AUTH_MAX_KEYS, sizeof *auth_keys);
    if (auth_keys == NULL) {
        snprintf(err, errlen, "out of memory");
        return KILN_ENOMEM;
    }
    size_t entry = 0;
    const char *p = spec;
    for (;;) {
        entry++;
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        /* Tolerate spaces around entries ("a:b, c:d"). */
        while (len > 0 && (*p == ' ' || *p == '\t')) p++, len--;
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        const char *colon = memchr(p, ':', len);
        if (colon == NULL) {
            snprintf(err, errlen, "KILN_API_KEYS entry %zu has no ':' (want token:user)", entry);
            goto out;
        }
        size_t tlen = (size_t)(colon - p), ulen = len - tlen - 1;
        if (tlen == 0 || tlen > GW_AUTH_TOKEN_MAX || !auth_visible(p, tlen)) {
            snprintf(err, errlen,
                     "KILN_API_KEYS entry %zu: the token must be 1-%d visible ASCII characters",
                     entry, GW_AUTH_TOKEN_MAX);
            goto out;
        }
        if (ulen == 0 || ulen > KILN_USER_MAX_LEN || !auth_visible(colon + 1, ulen)) {
            snprintf(err, errlen,
                     "KILN_API_KEYS entry %zu: the user must be 1-%d visible ASCII characters",
                     entry, KILN_USER_MAX_LEN);
            goto out;
        }
        if (auth_nkeys == GW_AUTH_MAX_KEYS) {
            snprintf(err, errlen, "KILN_API_KEYS has more than %d entries", GW_AUTH_MAX_KEYS);
            goto out;
        }
        auth_key *k = &auth_keys[auth_nkeys];
        if (!auth_digest(p, tlen, k->digest) || (k->user = strndup(colon + 1, ulen)) == NULL) {
            snprintf(err, errlen, "out of memory");
            st = KILN_ENOMEM;
            goto out;
        }
        auth_nkeys++;
        for (size_t i = 0; i + 1 < auth_nkeys; i++) {
            if (CRYPTO_memcmp(auth_keys[i].digest, k->digest, AUTH_DIGEST_LEN) == 0) {
                snprintf(err, errlen, "KILN_API_KEYS entry %zu repeats the token of entry %zu",
                         entry, i + 1);
                goto out;
            }
        }
        if (end == NULL) break;
        p = end + 1;
    }
    return KILN_OK;
out:
    gw_auth_free();
    return st;
}

int gw_auth_check(struct MHD_Connection *c, const char **user)
{
    return gw_auth_check_header(
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION), user);
}

int gw_auth_check_header(const char *h, const char **user)
{
    if (h == NULL) return -1;
    while (*h == ' ') h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) return -1;
    h += 6;
    while (*h == ' ' || *h == '\t') h++;
    size_t len = strlen(h);
    while (len > 0 && (h[len - 1] == ' ' || h[len - 1] == '\t')) len--;
    if (len == 0 || len > GW_AUTH_TOKEN_MAX) return -1;
    unsigned char d[AUTH_DIGEST_LEN];
    if (!auth_digest(h, len, d)) return -1;
    int found = -1;
    /* No early exit: every key is compared. */
    for (size_t i = 0; i < auth_nkeys; i++) {
        int eq = CRYPTO_memcmp(auth_keys[i].digest, d, AUTH_DIGEST_LEN) == 0;
        found = eq ? (int)i : found;
    }
    if (found >= 0 && user != NULL) *user = auth_keys[found].user;
    return found;
}
