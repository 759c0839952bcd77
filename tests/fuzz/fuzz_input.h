/* fuzz_input.h - reading typed values off a fuzzer's input, for the targets
 * that build structured messages (protobuf) instead of only passing the raw
 * bytes on. An exhausted input reads as zeros and empty strings. */
#ifndef KILN_FUZZ_INPUT_H
#define KILN_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n;
    /* Strings handed out, freed together by fz_free. */
    char *owned[64];
    size_t nowned;
} fz_input;

static inline void fz_init(fz_input *in, const uint8_t *data, size_t size)
{
    memset(in, 0, sizeof *in);
    in->p = data;
    in->n = size;
}

static inline uint8_t fz_u8(fz_input *in)
{
    if (in->n == 0) return 0;
    in->n--;
    return *in->p++;
}

static inline uint32_t fz_u32(fz_input *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = (v << 8) | fz_u8(in);
    return v;
}

static inline int64_t fz_i64(fz_input *in)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | fz_u8(in);
    return (int64_t)v;
}

/* A NUL-terminated string of the next 0..max bytes (length from one byte,
 * scaled); owned by in. NULL once 64 strings were taken or on no memory. */
static inline char *fz_str(fz_input *in, size_t max)
{
    if (in->nowned == sizeof in->owned / sizeof in->owned[0]) return NULL;
    size_t len = max == 0 ? 0 : (size_t)fz_u8(in) * max / 255;
    if (len > in->n) len = in->n;
    char *s = malloc(len + 1);
    if (s == NULL) return NULL;
    memcpy(s, in->p, len);
    s[len] = '\0';
    in->p += len;
    in->n -= len;
    in->owned[in->nowned++] = s;
    return s;
}

static inline void fz_free(fz_input *in)
{
    for (size_t i = 0; i < in->nowned; i++) free(in->owned[i]);
    in->nowned = 0;
}

/* An exact-size heap copy of data, so ASan sees a read past its end. */
static inline char *fz_copy(const uint8_t *data, size_t size)
{
    char *c = malloc(size > 0 ? size : 1);
    if (c != NULL && size > 0) memcpy(c, data, size);
    return c;
}

#endif
