/* png.c - deterministic PNG pictures derived from a seed, encoded with libpng
 * into memory (fast settings: zlib level 1, SUB filter, which suits gradients). */
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "hash.h"
#include "png.h"

#define PNG_OUT_MAX (16u * 1024u * 1024u) /* an encoded picture never exceeds this */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int overflow;
} png_membuf;

static void png_write_cb(png_structp png, png_bytep data, png_size_t n)
{
    png_membuf *m = png_get_io_ptr(png);
    if (m->overflow) return;
    if (m->len + n > m->cap) {
        size_t cap = m->cap != 0 ? m->cap : 4096;
        while (cap < m->len + n) cap *= 2;
        uint8_t *nb = cap <= PNG_OUT_MAX ? realloc(m->buf, cap) : NULL;
        if (nb == NULL) {
            m->overflow = 1; /* reported after png_write_end */
            return;
        }
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, data, n);
    m->len += n;
}

static void png_flush_cb(png_structp png) { (void)png; }

/* libpng reports errors by longjmp; keep its warnings quiet. */
static void png_warn_cb(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

typedef struct {
    uint8_t c0[3], c1[3], disc[3];
    unsigned cx, cy, r2;
    unsigned stripe; /* stripe period in pixels, a power of two */
} png_scene;

static void png_scene_make(uint64_t seed, unsigned w, unsigned h, png_scene *s)
{
    uint64_t a = dev_hash_mix(seed);
    uint64_t b = dev_hash_mix(a);
    for (int i = 0; i < 3; i++) {
        s->c0[i] = (uint8_t)(a >> (8 * i));
        s->c1[i] = (uint8_t)(a >> (8 * (i + 3)));
        s->disc[i] = (uint8_t)(b >> (8 * i));
    }
    unsigned side = w < h ? w : h;
    s->cx = (unsigned)((b >> 24) % w);
    s->cy = (unsigned)((b >> 36) % h);
    unsigned r = side / 8 + (unsigned)((b >> 48) % (side / 3 + 1));
    s->r2 = r * r;
    s->stripe = 4u << ((a >> 60) & 3u);
}

/* Fills one RGB row of the picture. */
static void png_scene_row(const png_scene *s, unsigned w, unsigned h, unsigned y, uint8_t *row)
{
    unsigned span = w + h - 2 > 0 ? w + h - 2 : 1;
    int dy = (int)y - (int)s->cy;
    unsigned dy2 = (unsigned)(dy * dy);
    for (unsigned x = 0; x < w; x++) {
        uint8_t *px = row + 3 * x;
        int dx = (int)x - (int)s->cx;
        if ((unsigned)(dx * dx) + dy2 <= s->r2) {
            memcpy(px, s->disc, 3);
            continue;
        }
        unsigned t = ((x + y) * 255u) / span;
        for (int i = 0; i < 3; i++)
            px[i] = (uint8_t)((s->c0[i] * (255u - t) + s->c1[i] * t) / 255u);
        if (((x + y) & s->stripe) != 0) /* soft diagonal stripes */
            for (int i = 0; i < 3; i++) px[i] = (uint8_t)(px[i] - (px[i] >> 3));
    }
}

kiln_status dev_png_render(uint64_t seed, unsigned w, unsigned h, uint8_t **out, size_t *len)
{
    if (out == NULL || len == NULL || w == 0 || h == 0 || w > DEV_PNG_MAX_SIDE ||
        h > DEV_PNG_MAX_SIDE)
        return KILN_EINVAL;
    kiln_status st = KILN_ERR;
    png_structp png = NULL;
    png_infop info = NULL;
    /* volatile: these are modified between setjmp and a possible longjmp. */
    uint8_t *volatile row = NULL;
    png_membuf m = {0};
    png_membuf *volatile mp = &m;
    png_scene scene;
    png_scene_make(seed, w, h, &scene);

    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, png_warn_cb);
    if (png == NULL) return KILN_ENOMEM;
    info = png_create_info_struct(png);
    if (info == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    if (setjmp(png_jmpbuf(png))) {
        st = KILN_ERR;
        goto out;
    }
    row = malloc((size_t)w * 3);
    if (row == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    png_set_write_fn(png, mp, png_write_cb, png_flush_cb);
    png_set_compression_level(png, 1);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
    png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (unsigned y = 0; y < h; y++) {
        png_scene_row(&scene, w, h, y, row);
        png_write_row(png, row);
    }
    png_write_end(png, info);
    if (mp->overflow) {
        st = KILN_ENOMEM;
        goto out;
    }
    *out = mp->buf;
    *len = mp->len;
    mp->buf = NULL; /* ownership moved to the caller */
    st = KILN_OK;
out:
    png_destroy_write_struct(&png, info != NULL ? &info : NULL);
    free(row);
    free(mp->buf);
    return st;
}
