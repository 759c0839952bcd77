/* b64.c - standard base64 encoding for b64_json image responses. */
#include <stdlib.h>

#include "b64.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

kiln_status dev_b64_encode(const uint8_t *in, size_t len, char **out)
{
    if ((in == NULL && len != 0) || out == NULL) return KILN_EINVAL;
    if (len > (SIZE_MAX / 4) * 3 - 3) return KILN_EINVAL;
    size_t olen = ((len + 2) / 3) * 4;
    char *s = malloc(olen + 1);
    if (s == NULL) return KILN_ENOMEM;
    char *p = s;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = b64_alphabet[(v >> 18) & 63];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = b64_alphabet[(v >> 6) & 63];
        *p++ = b64_alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
        *p++ = b64_alphabet[(v >> 18) & 63];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = '\0';
    *out = s;
    return KILN_OK;
}
