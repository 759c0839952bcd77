/* picture.c - deterministic PNG pictures derived from a seed, encoded with libpng
 * into memory as a palette image (fast settings: zlib level 1, no filter: each
 * row is the previous one shifted by a pixel, which deflate finds). */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "hash.h"
#include "picture.h"

#define PICTURE_PNG_MAX (16u * 1024u * 1024u) /* an encoded picture never exceeds this */

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int overflow;
} picture_membuf;

static void picture_write_cb(png_structp png, png_bytep data, png_size_t n)
{
    picture_membuf *m = png_get_io_ptr(png);
    if (m->overflow) return;
    if (m->len + n > m->cap) {
        size_t cap = m->cap != 0 ? m->cap : 4096;
        while (cap < m->len + n) cap *= 2;
        uint8_t *nb = cap <= PICTURE_PNG_MAX ? realloc(m->buf, cap) : NULL;
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

static void picture_flush_cb(png_structp png) { (void)png; }

/* libpng reports errors by longjmp; keep its warnings quiet. */
static void picture_warn_cb(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* The picture is a palette image: PICTURE_STEPS gradient colours, the same
 * colours darkened for the stripes, and one colour for the disc. One byte per
 * pixel keeps encoding cheap (the benchmark asks for many pictures). */
#define PICTURE_STEPS 127
#define PICTURE_DISC (2 * PICTURE_STEPS)

typedef struct {
    png_color palette[PICTURE_DISC + 1];
    unsigned cx, cy, r;
    unsigned stripe; /* stripe period in pixels, a power of two */
} picture_scene;

static void picture_scene_make(uint64_t seed, unsigned w, unsigned h, picture_scene *s)
{
    uint64_t a = dev_hash_mix(seed);
    uint64_t b = dev_hash_mix(a);
    uint8_t c0[3], c1[3];
    for (int i = 0; i < 3; i++) {
        c0[i] = (uint8_t)(a >> (8 * i));
        c1[i] = (uint8_t)(a >> (8 * (i + 3)));
    }
    for (unsigned t = 0; t < PICTURE_STEPS; t++) {
        uint8_t px[3];
        for (int i = 0; i < 3; i++)
            px[i] = (uint8_t)((c0[i] * (PICTURE_STEPS - 1 - t) + c1[i] * t) / (PICTURE_STEPS - 1));
        s->palette[t] = (png_color){px[0], px[1], px[2]};
        s->palette[PICTURE_STEPS + t] = (png_color){(uint8_t)(px[0] - (px[0] >> 3)),
                                                    (uint8_t)(px[1] - (px[1] >> 3)),
                                                    (uint8_t)(px[2] - (px[2] >> 3))};
    }
    s->palette[PICTURE_DISC] = (png_color){(uint8_t)b, (uint8_t)(b >> 8), (uint8_t)(b >> 16)};
    unsigned side = w < h ? w : h;
    s->cx = (unsigned)((b >> 24) % w);
    s->cy = (unsigned)((b >> 36) % h);
    s->r = side / 8 + (unsigned)((b >> 48) % (side / 3 + 1));
    s->stripe = 4u << ((a >> 60) & 3u);
}

/* lut[x + y] is the palette index of the background at (x, y). */
static void picture_lut(const picture_scene *s, unsigned w, unsigned h, uint8_t *lut)
{
    unsigned span = w + h - 2 > 0 ? w + h - 2 : 1;
    for (unsigned d = 0; d < w + h - 1; d++) {
        unsigned t = (d * (PICTURE_STEPS - 1)) / span;
        lut[d] = (uint8_t)((d & s->stripe) != 0 ? PICTURE_STEPS + t : t);
    }
}

/* Fills one row: the background from lut, then the disc's span in this row. */
static void picture_row(const picture_scene *s, const uint8_t *lut, unsigned w, unsigned y,
                        uint8_t *row)
{
    memcpy(row, lut + y, w);
    unsigned dy = y > s->cy ? y - s->cy : s->cy - y;
    if (dy > s->r) return;
    unsigned half = (unsigned)sqrt((double)(s->r * s->r - dy * dy));
    unsigned x0 = s->cx > half ? s->cx - half : 0;
    unsigned x1 = s->cx + half < w ? s->cx + half : w - 1;
    memset(row + x0, PICTURE_DISC, x1 - x0 + 1);
}

kiln_status dev_picture_png(uint64_t seed, unsigned w, unsigned h, uint8_t **out, size_t *len)
{
    if (out == NULL || len == NULL || w == 0 || h == 0 || w > DEV_PICTURE_MAX_SIDE ||
        h > DEV_PICTURE_MAX_SIDE)
        return KILN_EINVAL;
    kiln_status st = KILN_ERR;
    png_structp png = NULL;
    png_infop info = NULL;
    /* volatile: these are modified between setjmp and a possible longjmp. */
    uint8_t *volatile row = NULL;
    uint8_t *volatile lut = NULL;
    picture_membuf m = {0};
    picture_membuf *volatile mp = &m;
    picture_scene scene;
    picture_scene_make(seed, w, h, &scene);

    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, picture_warn_cb);
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
    row = malloc(w);
    lut = malloc((size_t)w + h);
    if (row == NULL || lut == NULL) {
        st = KILN_ENOMEM;
        goto out;
    }
    png_set_write_fn(png, mp, picture_write_cb, picture_flush_cb);
    png_set_compression_level(png, 1);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
    png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_PLTE(png, info, scene.palette, PICTURE_DISC + 1);
    picture_lut(&scene, w, h, lut);
    png_write_info(png, info);
    for (unsigned y = 0; y < h; y++) {
        picture_row(&scene, lut, w, y, row);
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
    free(lut);
    free(mp->buf);
    return st;
}
