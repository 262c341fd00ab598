/* Direct convolution kernels of the Cython backend (design: docs/PERFORMANCE.md, "Direct
 * convolution kernels").  Included by conv_direct.pyx only.
 *
 * Input of one image -> "grid" layout xq: zero padded, split into sh*sw stride phases, each
 * channel a plane of Hq x Wq.  Output pixel (oh, ow) is grid position p = oh*Wq + ow, and tap
 * (i, j) reads xq at p + tab[i*KW + j], so SIMD vectors of consecutive p need plain unaligned
 * loads for any stride.  Columns ow >= OW of the grid are computed and dropped.
 * The micro-kernels (conv_direct_kern.h) are compiled three times: AVX-512, AVX2+FMA and a
 * portable baseline, chosen at run time (fcd_set_isa).
 */
#ifndef FASTCNN_CONV_DIRECT_H
#define FASTCNN_CONV_DIRECT_H

#include <stddef.h>
#include <string.h>

#include "_simd.h"
#include "planestats.h"
#include "pool2.h"

typedef ptrdiff_t fcd_i;

typedef struct {
    fcd_i C, Hs, Ws, dh, dw;      /* source channels, rows, cols; source dilation */
    fcd_i OC, KH, KW, sh, sw, pt, pl, OH, OW;  /* convolution over the (dilated) source */
    fcd_i nph, Hq, Wq, plane, P, PR, xq_size, J, OCP;  /* derived (fcd_geo_init) */
} fcd_geo;

#define FCD_SLACK_EXTRA 32
#ifndef FCD_PACK_AHEAD
#define FCD_PACK_AHEAD 16 /* rows: the packings ask for the source row this many rows ahead */
#endif

/* Ask for the row FCD_PACK_AHEAD rows after the source row s (rows of Ws floats), a cache line
 * at a time (a prefetch past the array does not fault). */
static inline void fcd_row_ahead(const float* s, fcd_i Ws)
{
    for (fcd_i v = 0; v < Ws; v += 16)
        __builtin_prefetch(s + FCD_PACK_AHEAD * Ws + v, 0, 3);
}

/* Part k of K of the n floats at p asked for into L2, a cache line at a time (the next images'
 * data, while the current ones run through a task's tiles). */
static inline void fcd_prefetch_part(const float* p, fcd_i n, fcd_i k, fcd_i K)
{
    const char* a = (const char*)(p + k * n / K);
    const char* e = (const char*)(p + (k + 1) * n / K);
    for (; a < e; a += 64)
        __builtin_prefetch(a, 0, 2);
}

/* The grid of Hq x Wq positions per phase and channel, and what follows from it. */
static void fcd_geo_grid(fcd_geo* g, fcd_i Hq, fcd_i Wq)
{
    g->Hq = Hq;
    g->Wq = Wq;
    g->plane = Hq * Wq;
    g->P = g->OH * Wq;
    g->PR = (g->P + 15) / 16 * 16 + 16;  /* (the last row's vector may pass P) */
    /* Vectors past the last grid position read at most Wq + 15 floats beyond the planes. */
    g->xq_size = g->nph * g->C * g->plane + Wq + FCD_SLACK_EXTRA;
}

/* pt, pl may be negative (backward data with padding >= kernel). */
static void fcd_geo_init(fcd_geo* g, fcd_i C, fcd_i Hs, fcd_i Ws, fcd_i dh, fcd_i dw, fcd_i OC,
                         fcd_i KH, fcd_i KW, fcd_i sh, fcd_i sw, fcd_i pt, fcd_i pl, fcd_i OH,
                         fcd_i OW, fcd_i J)
{
    g->C = C; g->Hs = Hs; g->Ws = Ws; g->dh = dh; g->dw = dw;
    g->OC = OC; g->KH = KH; g->KW = KW; g->sh = sh; g->sw = sw; g->pt = pt; g->pl = pl;
    g->OH = OH; g->OW = OW;
    g->nph = sh * sw;
    fcd_geo_grid(g, OH + (KH - 1) / sh, OW + (KW - 1) / sw);
    g->J = J;
    g->OCP = (OC + J - 1) / J * J;
}

/* tab[i*KW + j]: offset of tap (i, j) in xq relative to the output's grid position. */
static void fcd_make_tab(const fcd_geo* g, fcd_i* tab)
{
    fcd_i i, j;
    for (i = 0; i < g->KH; i++)
        for (j = 0; j < g->KW; j++)
            tab[i * g->KW + j] = ((i % g->sh) * g->sw + (j % g->sw)) * g->C * g->plane
                                 + (i / g->sh) * g->Wq + j / g->sw;
}

/* Start positions st of the forward's pixel vectors of VL lanes, covering every valid
 * output: consecutive vectors over the whole grid, or vectors aligned to each output row
 * (which skip the dropped columns when OW <= VL*k < Wq) unless they need more (as many: rows,
 * stored straight from the registers).  Returns the count; for row-aligned vectors also
 * fills yo (output offset oh*OW + ow0) and nv (valid lanes) and sets *rows.  Arrays: room
 * for max(P/VL + 1, OH*(OW/VL + 1)) entries. */
static fcd_i fcd_pixel_starts(const fcd_geo* g, fcd_i VL, fcd_i* st, fcd_i* yo, fcd_i* nv,
                              int* rows)
{
    fcd_i grid = (g->P + VL - 1) / VL, per_row = (g->OW + VL - 1) / VL, n = 0, oh, k;
    *rows = grid >= g->OH * per_row;
    if (!*rows) {
        for (k = 0; k < grid; k++)
            st[n++] = k * VL;
        return n;
    }
    for (oh = 0; oh < g->OH; oh++)
        for (k = 0; k < per_row; k++) {
            st[n] = oh * g->Wq + k * VL;
            yo[n] = oh * g->OW + k * VL;
            nv[n] = g->OW - k * VL < VL ? g->OW - k * VL : VL;
            n++;
        }
    return n;
}

/* Source index of padded coordinate r (one axis), or -1 for a zero. */
static inline fcd_i fcd_src(fcd_i r, fcd_i pad, fcd_i dil, fcd_i n)
{
    fcd_i u = r - pad;
    if (u < 0 || u % dil != 0) return -1;
    u /= dil;
    return u < n ? u : -1;
}

/* Forward weights (OC, C, KH, KW) -> wp[ob][c][kk][B] in blocks of B output channels (zero
 * rows past OC): B = g->J for the pixel tiles (fcd_pack_weights), the ISA's JC for the channel
 * tiles.  With flip: backward-data weights from w (C', OC', KH, KW) of the forward layer: this
 * convolution's output channel o is the layer's input channel, its input channel c the
 * layer's output channel, taps rotated by 180 degrees. */
static void fcd_pack_weights_blocks(const fcd_geo* g, const float* w, int flip, fcd_i B, float* wp)
{
    fcd_i KK = g->KH * g->KW, ob, c, kk, jj, o;
    for (ob = 0; ob * B < g->OC; ob++)
        for (c = 0; c < g->C; c++)
            for (kk = 0; kk < KK; kk++)
                for (jj = 0; jj < B; jj++) {
                    o = ob * B + jj;
                    wp[((ob * g->C + c) * KK + kk) * B + jj] =
                        o >= g->OC ? 0.0f : flip ? w[(c * g->OC + o) * KK + KK - 1 - kk] : w[(o * g->C + c) * KK + kk];
                }
}

static void fcd_pack_weights(const fcd_geo* g, const float* w, int flip, float* wp)
{
    fcd_pack_weights_blocks(g, w, flip, g->J, wp);
}

/* Whether the forward of g runs on channel tiles: when each output sums at least min_patch
 * products (C*KH*KW) and their lanes hold enough more valid outputs than the pixel vectors'
 * (NS of VL lanes, J output channels a tile) do, by gain_pct percent
 * (FASTCNN_DIRECT_CTILE_*; docs/PERFORMANCE.md, section 9). */
static int fcd_use_ctile(const fcd_geo* g, fcd_i NS, fcd_i VL, fcd_i JC, fcd_i gain_pct, fcd_i min_patch)
{
    if (g->C * g->KH * g->KW < min_patch)
        return 0;
    double pix = (double)(g->OH * g->OW) / (double)(NS * VL) * (double)g->OC / (double)g->OCP;
    double ch = (double)g->OC / (double)((g->OC + JC - 1) / JC * JC);
    return ch * 100.0 >= pix * (double)gain_pct;
}


/* Winograd F(2x2, 3x3) weights of output-channel block ob: V = G g G^T of each 3x3 kernel g
 * (in double, rounded once), packed vp[xi][ob][c][J] (zero rows past OC), xi = 4*row + column
 * of V.  With flip, g is taken from w (C, OC, 3, 3) rotated by 180 degrees, as
 * fcd_pack_weights. */
static void fcw_pack_weights(fcd_i OC, fcd_i C, fcd_i J, fcd_i OCP, const float* w, int flip,
                             fcd_i ob, float* vp)
{
    fcd_i NOB = OCP / J, c, jj, o, i, j, xi;
    float blk[16][64];  /* a channel's 16 planes of the block (J <= 64), stored row by row */
    for (c = 0; c < C; c++) {
        for (jj = 0; jj < J; jj++) {
            double gg[3][3], t[4][3];
            o = ob * J + jj;
            for (i = 0; i < 3; i++)
                for (j = 0; j < 3; j++)
                    gg[i][j] = o >= OC ? 0.0 : flip ? w[(c * OC + o) * 9 + 8 - (i * 3 + j)]
                                                    : w[(o * C + c) * 9 + i * 3 + j];
            for (j = 0; j < 3; j++) {
                t[0][j] = gg[0][j];
                t[1][j] = 0.5 * (gg[0][j] + gg[1][j] + gg[2][j]);
                t[2][j] = 0.5 * (gg[0][j] - gg[1][j] + gg[2][j]);
                t[3][j] = gg[2][j];
            }
            for (i = 0; i < 4; i++) {
                blk[4 * i][jj] = (float)t[i][0];
                blk[4 * i + 1][jj] = (float)(0.5 * (t[i][0] + t[i][1] + t[i][2]));
                blk[4 * i + 2][jj] = (float)(0.5 * (t[i][0] + -t[i][1] + t[i][2]));
                blk[4 * i + 3][jj] = (float)t[i][2];
            }
        }
        for (xi = 0; xi < 16; xi++)
            memcpy(vp + ((xi * NOB + ob) * C + c) * J, blk[xi], J * sizeof(float));
    }
}

/* Winograd F(2x2, 5x5): G of the 1-D algorithm at the points 0, 1, -1, 2, -2 and infinity
 * (docs/PERFORMANCE.md, "Winograd convolutions"; the reference's WINOGRAD5_G). */
static const double fcw_g5[6][5] = {
    {1.0 / 4, 0.0, 0.0, 0.0, 0.0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 3, 2.0 / 3},
    {1.0 / 24, -1.0 / 12, 1.0 / 6, -1.0 / 3, 2.0 / 3},
    {0.0, 0.0, 0.0, 0.0, 1.0}};

/* Winograd F(4x4, 3x3): G of the same points (the reference's WINOGRAD43_G). */
static const double fcw_g43[6][3] = {
    {1.0 / 4, 0.0, 0.0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0.0, 0.0, 1.0}};

static const double fcw_g3[4][3] = {{1.0, 0.0, 0.0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0.0, 0.0, 1.0}};

/* The weight gradient from its transform: gw[o][c] = G^T Z G (R x R) of each channel pair, Z
 * the A x A values z[xi][c][o] (xi = A*row + column; planes zs floats apart, channel rows of
 * OCV), in double, each sum in order of its terms, rounded once; channels c0 .. c1 - 1. */
static void fcw_unpack_wgrad(const float* z, fcd_i zs, fcd_i OCV, fcd_i C, fcd_i OC, int R, fcd_i c0,
                             fcd_i c1, float* gw)
{
    fcd_i A = R + 1, c, o, i, j, a, b;
    for (c = c0; c < c1; c++)
        for (o = 0; o < OC; o++) {
            double t[6][6], v;
            for (a = 0; a < R; a++)
                for (j = 0; j < A; j++) {
                    v = 0.0;
                    for (i = 0; i < A; i++)
                        v = v + (R == 5 ? fcw_g5[i][a] : fcw_g3[i][a]) * (double)z[(i * A + j) * zs + c * OCV + o];
                    t[a][j] = v;
                }
            for (a = 0; a < R; a++)
                for (b = 0; b < R; b++) {
                    v = 0.0;
                    for (j = 0; j < A; j++)
                        v = v + t[a][j] * (R == 5 ? fcw_g5[j][b] : fcw_g3[j][b]);
                    gw[((o * C + c) * R + a) * R + b] = (float)v;
                }
        }
}

/* Winograd scratch: floats between consecutive xi planes of the transformed input (C rows of
 * Q) and of the products (J rows of Q), one cache line more than the rows, so that the 16
 * (36) planes of a tile do not share a cache set when C*Q or J*Q is a power of two. */
static inline fcd_i fcw_u_stride(fcd_i C, fcd_i Q) { return C * Q + 16; }
static inline fcd_i fcw_m_stride(fcd_i J, fcd_i Q) { return J * Q + 16; }
#define FCW_QMAX 64  /* tile positions per chunk, at most */
#define FCW_PREFETCH_ROW 32  /* F(4x4) output rows this long (floats) or longer: their lines asked for before a channel's transform */

/* ---------------------------------------------------------------- ISA-specific kernels */

typedef void (*fcd_fwd_fn)(const fcd_geo*, const float*, const fcd_i*, const float*, const fcd_i*,
                           const fcd_i*, const fcd_i*, fcd_i, const float*, int, float*, float*);
typedef void (*fcd_bww_fn)(const float*, fcd_i, const float*, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i,
                           fcd_i, fcd_i, int, const fcd_i*, float*, int, int, fcd_i);
typedef float (*fcd_probe_fn)(long, float, fcd_i*);
typedef void (*fcd_pack_fn)(const fcd_geo*, const float*, fcd_i, float*);
typedef void (*fcd_pack_in_fn)(const fcd_geo*, const float*, float*, int);
typedef void (*fcd_unpack_fn)(const fcd_geo*, const float*, const float*, int, float*);
typedef void (*fcw_wgrad_fn)(const fcd_geo*, const float*, fcd_i, const float*, fcd_i, fcd_i, fcd_i, fcd_i,
                             float*, fcd_i, int, float*, float*, fcd_i, const fcd_i*, fcd_i, int, float*, int,
                             int);
typedef void (*fcd_phases_fn)(const float*, const fcd_i*, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i, float*);
typedef int (*fcd_unpool_t_fn)(const float*, const int*, const float*, fcd_i, fcd_i, fcd_i, fcd_i, float*,
                               float*);
typedef void (*fcd_sums_t_fn)(const float*, fcd_i, fcd_i, fcd_i, double*);
typedef void (*fcd_spw_pass_fn)(const float*, const fcd_i*, const float*, fcd_i, fcd_i, fcd_i, fcd_i, float*, fcd_i,
                                int);
typedef void (*fcd_spd_row_fn)(const float*, const fcd_i*, const float*, const int*, fcd_i, fcd_i, fcd_i,
                               float*);
typedef int (*fcd_pack_cl_fn)(const float*, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i, fcd_i, float*, float*);
typedef void (*fcw_weights6_fn)(fcd_i, fcd_i, fcd_i, const float*, int, fcd_i, int, float*);
typedef void (*fcw_images_fn)(const fcd_geo*, const float*, fcd_i, const float*,
                              const fcd_i*, const float*, int, fcd_i, fcd_i, float*, float*, fcd_i,
                              int, float*, float*, float*, fcd_i, int, int);

/* One ISA's kernels and tile sizes (each compilation of conv_direct_kern.h defines one). */
typedef void (*fcd_fwd_ct_fn)(const fcd_geo*, const float*, const fcd_i*, const float*, const float*, int, float*,
                              float*);

typedef struct {
    fcd_fwd_fn fwd_image;
    fcd_fwd_ct_fn fwd_image_ct;
    fcd_bww_fn bwd_weight_tile;
    fcd_probe_fn fma_probe;
    fcd_pack_fn pack_grad_t;
    fcd_pack_in_fn pack_input;
    fcd_unpack_fn unpack_output;
    fcw_images_fn wino_images;
    fcw_wgrad_fn wino_wgrad;
    fcw_weights6_fn wino_weights6;
    fcd_phases_fn interleave_phases;
    fcd_unpool_t_fn unpool_grad_t;
    fcd_sums_t_fn grad_t_sums;
    fcd_spw_pass_fn spw_pass;
    fcd_spd_row_fn spd_row;
    fcd_pack_cl_fn pack_cl;
    fcd_i J, VL, WT, TM, JC, CR;
} fcd_isa_kernels;

/* Portable baseline: GCC/Clang vector extension, 4 lanes (SSE2 on x86-64, NEON on arm64). */
#define FCD_SUFFIX base
#define FCD_VL 4
#define FCD_J 4
#define FCD_VMAX 2
#define FCD_CV 2  /* channel tiles: output-channel vectors (every path) and pixels (FCD_CR) */
#define FCD_CR 6
#define FCD_WT 6
#define FCD_TAPS_MAX (2 * FCD_WT)  /* taps of a weight-gradient tile of one channel vector, at most */
typedef float fcd_v4 __attribute__((vector_size(16)));
typedef float fcd_v4u __attribute__((vector_size(16), aligned(4)));
typedef int fcd_i4 __attribute__((vector_size(16)));
#define FCD_VT fcd_v4
#define FCD_LOAD(p) (*(const fcd_v4u*)(p))
#define FCD_STORE(p, v) (*(fcd_v4u*)(p) = (v))
#define FCD_SET1(s) ((fcd_v4){(s), (s), (s), (s)})
#define FCD_ZERO() ((fcd_v4){0.0f, 0.0f, 0.0f, 0.0f})
#define FCD_FMA(a, b, c) ((a) * (b) + (c))
#define FCD_ADD(a, b) ((a) + (b))
#define FCD_SUB(a, b) ((a) - (b))
#define FCD_RELU(v) ((fcd_v4)((fcd_i4)(v) & ~((v) <= FCD_ZERO())))  /* (v <= 0: all bits 0) */
typedef int fcd_i4u __attribute__((vector_size(16), aligned(4)));
/* v where the int lanes at p equal n, else +0.0; a lane of 1.0f where m > 0, else 0.0f */
#define FCD_SEL_EQ(p, n, v) ((fcd_v4)((fcd_i4)(v) & (*(const fcd_i4u*)(p) == (n))))
#define FCD_ONE_IF_POS(m) ((fcd_v4)((fcd_i4)FCD_SET1(1.0f) & ((m) > FCD_ZERO())))
#define FCD_MUL(a, b) ((a) * (b))
#define FCD_STORE_N(p, v, n) fcd_store_n((p), (const float*)&(v), (n))
/* The first n floats of a vector (the last, partial vector of a row). */
static inline void fcd_store_n(float* d, const float* s, fcd_i n)
{
    fcd_i l;
    for (l = 0; l < n; l++)
        d[l] = s[l];
}
/* Lanes lo .. hi - 1 of a replaced by p[lo .. hi) (no other lane of p is read). */
#define FCD_MASK_T fcd_i
#define FCD_LANES(lo, hi) ((lo) | (hi) << 8)
#define FCD_LOAD_MASKED(a, m, p) fcd_load_lanes((a), (m), (p))
static inline fcd_v4 fcd_load_lanes(fcd_v4 a, fcd_i m, const float* p)
{
    fcd_i l;
    for (l = m & 255; l < m >> 8; l++)
        a[l] = p[l];
    return a;
}
#include "conv_direct_kern.h"

#ifdef FC_SIMD
#include <immintrin.h>

FC_TARGET_PUSH(FC_AVX2)
#define FCD_SUFFIX avx2
#define FCD_VL 8
#define FCD_J 4
#define FCD_VMAX 3
#define FCD_CR 6
#define FCD_WT 6
#define FCD_TAPS_MAX (2 * FCD_WT)  /* taps of a weight-gradient tile of one channel vector, at most */
#define FCD_VT __m256
#define FCD_LOAD(p) _mm256_loadu_ps(p)
#define FCD_STORE(p, v) _mm256_storeu_ps((p), (v))
#define FCD_SET1(s) _mm256_set1_ps(s)
#define FCD_ZERO() _mm256_setzero_ps()
#define FCD_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define FCD_ADD(a, b) _mm256_add_ps((a), (b))
#define FCD_SUB(a, b) _mm256_sub_ps((a), (b))
#define FCD_RELU(v) _mm256_andnot_ps(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_LE_OQ), (v))
#define FCD_SEL_EQ(p, n, v) _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32( \
    _mm256_loadu_si256((const __m256i*)(p)), _mm256_set1_epi32(n))), (v))
#define FCD_ONE_IF_POS(m) _mm256_and_ps(_mm256_cmp_ps((m), _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(1.0f))
#define FCD_MUL(a, b) _mm256_mul_ps((a), (b))
#define FCD_STORE_N(p, v, n) fc_store_n_avx2((p), _mm256_castps_si256(v), (n))
#define FCD_MASK_T __m256i
#define FCD_LANES(lo, hi) _mm256_andnot_si256( \
    _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(lo)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), \
    _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(hi)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))
/* (the masked-off lanes load as +0.0, so OR merges the run into a's zero lanes) */
#define FCD_LOAD_MASKED(a, m, p) _mm256_or_ps((a), _mm256_maskload_ps((p), (m)))
#define FCD_TRANSPOSE fc_transpose8_avx2
#define FCD_EVENS fcd_even8_avx2
#define FCD_DEINTERLEAVE fcd_deinterleave_avx2
#define FCD_INTERLEAVE fcd_interleave_avx2
#define FCD_PUT_PAIRS fcd_put_pairs_avx2
#define FCD_QUADS fcd_quads_avx2
#define FCD_DEAL4 fcd_deal4_avx2

/* Lanes 0, 2, 4, 6 of lo then of hi (even 1) or lanes 1, 3, 5, 7 (even 0). */
static inline __m256 fcd_evens_avx2(__m256 lo, __m256 hi, int even)
{
    __m256 e = even ? _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)) : _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* fcd_deinterleave_avx512 by 8: two loads (masked at the row's end) and two shuffles. */
static inline void fcd_deinterleave_avx2(const float* s, fcd_i n, float* e, fcd_i ne, float* o, fcd_i no)
{
    fcd_i k;
    for (k = 0; k < ne || k < no; k += 8) {
        __m256 lo, hi;
        if (2 * k + 16 <= n) {
            lo = _mm256_loadu_ps(s + 2 * k);
            hi = _mm256_loadu_ps(s + 2 * k + 8);
        } else {
            lo = _mm256_maskload_ps(s + 2 * k, FCD_LANES(0, n - 2 * k));
            hi = _mm256_maskload_ps(s + 2 * k + 8, FCD_LANES(0, n - 2 * k - 8));
        }
        if (k < ne)
            fc_store_n_avx2(e + k, _mm256_castps_si256(fcd_evens_avx2(lo, hi, 1)), ne - k);
        if (k < no)
            fc_store_n_avx2(o + k, _mm256_castps_si256(fcd_evens_avx2(lo, hi, 0)), no - k);
    }
}

/* fcd_even16_avx512 by 8: d[0 .. n) = s[0], s[2], ..., s[2n - 2], nothing past s[2n - 2] read. */
static inline void fcd_even8_avx2(float* d, const float* s, fcd_i n)
{
    fcd_i k = 0;
    for (; k + 9 <= n; k += 8)  /* (reads s[2k + 15] <= s[2n - 3]) */
        _mm256_storeu_ps(d + k, fcd_evens_avx2(_mm256_loadu_ps(s + 2 * k), _mm256_loadu_ps(s + 2 * k + 8), 1));
    if (k < n) {
        fcd_i r = 2 * (n - k) - 1;  /* source values s[2k] .. s[2n - 2] */
        __m256 lo = _mm256_maskload_ps(s + 2 * k, FCD_LANES(0, r));
        __m256 hi = _mm256_maskload_ps(s + 2 * k + 8, FCD_LANES(0, r - 8));
        fc_store_n_avx2(d + k, _mm256_castps_si256(fcd_evens_avx2(lo, hi, 1)), n - k);
    }
}

/* v + b, then the ReLU kernels' rule if relu (NaN stays, -0 -> +0). */
static inline __m256 fcd_bias_relu_avx2(__m256 v, __m256 b, int relu)
{
    v = _mm256_add_ps(v, b);
    return relu ? FCD_RELU(v) : v;
}

/* fcd_put_pairs_avx512 by 8: d[0 .. 16) = f(a[0]), f(c[0]), ..., f(a[7]), f(c[7]). */
static inline void fcd_put_pairs_avx2(float* d, __m256 a, __m256 c, float b, int relu)
{
    const __m256 bv = _mm256_set1_ps(b);
    a = fcd_bias_relu_avx2(a, bv, relu);
    c = fcd_bias_relu_avx2(c, bv, relu);
    __m256 lo = _mm256_unpacklo_ps(a, c), hi = _mm256_unpackhi_ps(a, c);  /* (pairs 0, 1 | 4, 5 and 2, 3 | 6, 7) */
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

/* fcd_interleave_avx512's pairs by 8, then 4, reading nothing past s0[n), s1[n); returns the
 * pairs done (the caller finishes the last n % 4). */
static inline fcd_i fcd_interleave_avx2(const float* s0, const float* s1, fcd_i n, float b, int relu, float* d)
{
    fcd_i k;
    for (k = 0; k + 8 <= n; k += 8)
        fcd_put_pairs_avx2(d + 2 * k, _mm256_loadu_ps(s0 + k), _mm256_loadu_ps(s1 + k), b, relu);
    if (k + 4 <= n) {
        const __m128 bv = _mm_set1_ps(b);
        __m128 a = _mm_add_ps(_mm_loadu_ps(s0 + k), bv), c = _mm_add_ps(_mm_loadu_ps(s1 + k), bv);
        if (relu) {
            a = _mm_andnot_ps(_mm_cmp_ps(a, _mm_setzero_ps(), _CMP_LE_OQ), a);
            c = _mm_andnot_ps(_mm_cmp_ps(c, _mm_setzero_ps(), _CMP_LE_OQ), c);
        }
        _mm_storeu_ps(d + 2 * k, _mm_unpacklo_ps(a, c));
        _mm_storeu_ps(d + 2 * k + 4, _mm_unpackhi_ps(a, c));
        k += 4;
    }
    return k;
}

/* d[4 l + k] = q[k][l], l < 8, k < 4: a 4 x 8 transpose (pairs, then quads, then lanes). */
static inline void fcd_quads_avx2(const __m256* q, float* d)
{
    __m256 t0 = _mm256_unpacklo_ps(q[0], q[1]), t1 = _mm256_unpackhi_ps(q[0], q[1]);
    __m256 t2 = _mm256_unpacklo_ps(q[2], q[3]), t3 = _mm256_unpackhi_ps(q[2], q[3]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  /* (lanes l = 0 | 4) */
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));  /* (1 | 5) */
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));  /* (2 | 6) */
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));  /* (3 | 7) */
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(d + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(d + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

/* fcd_deal4_avx512 by 8: d[b ps + m] = s[4 m + b - o] (zero outside [0, n)), 32 source values per
 * four masked loads and the inverse of fcd_quads_avx2. */
static inline void fcd_deal4_avx2(const float* s, fcd_i n, fcd_i o, float* d, fcd_i ps, fcd_i nm)
{
    fcd_i m, u;
    for (m = 0; m < nm; m += 8) {
        __m256 x[4];
        for (u = 0; u < 4; u++) {  /* source values k - o, k = 4 m + 8 u + lane, inside [0, n) */
            fcd_i k0 = 4 * m + 8 * u - o;
            x[u] = k0 >= 0 && k0 + 8 <= n ? _mm256_loadu_ps(s + k0)
                                          : _mm256_maskload_ps(s + k0, FCD_LANES(-k0, n - k0));
        }
        /* x[u] holds phase columns m + 2u, m + 2u + 1 (4 phases each): regroup by 128-bit lanes */
        __m256 a0 = _mm256_permute2f128_ps(x[0], x[2], 0x20), a1 = _mm256_permute2f128_ps(x[0], x[2], 0x31);
        __m256 a2 = _mm256_permute2f128_ps(x[1], x[3], 0x20), a3 = _mm256_permute2f128_ps(x[1], x[3], 0x31);
        __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
        __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
        fcd_i left = nm - m;
        fc_store_n_avx2(d + m, _mm256_castps_si256(_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0))), left);
        fc_store_n_avx2(d + ps + m, _mm256_castps_si256(_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2))), left);
        fc_store_n_avx2(d + 2 * ps + m, _mm256_castps_si256(_mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0))), left);
        fc_store_n_avx2(d + 3 * ps + m, _mm256_castps_si256(_mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))), left);
    }
}

#include "transpose8.h"
#include "conv_direct_kern.h"
FC_TARGET_POP

FC_TARGET_PUSH(FC_AVX512)
#define FCD_SUFFIX avx512
#define FCD_VL 16
#define FCD_J 8
#define FCD_VMAX 3
#define FCD_CR 12
#define FCD_WT 12
#define FCD_TAPS_MAX 27  /* taps of a weight-gradient tile of one channel vector, at most */
#define FCD_VT __m512
#define FCD_LOAD(p) _mm512_loadu_ps(p)
#define FCD_STORE(p, v) _mm512_storeu_ps((p), (v))
#define FCD_SET1(s) _mm512_set1_ps(s)
#define FCD_ZERO() _mm512_setzero_ps()
#define FCD_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define FCD_ADD(a, b) _mm512_add_ps((a), (b))
#define FCD_SUB(a, b) _mm512_sub_ps((a), (b))
#define FCD_RELU(v) _mm512_mask_blend_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), _CMP_LE_OQ), (v), \
                                         _mm512_setzero_ps())
#define FCD_SEL_EQ(p, n, v) _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(_mm512_loadu_si512(p), \
                                                                    _mm512_set1_epi32(n)), (v))
#define FCD_ONE_IF_POS(m) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((m), _mm512_setzero_ps(), _CMP_GT_OQ), \
                                              _mm512_set1_ps(1.0f))
#define FCD_MUL(a, b) _mm512_mul_ps((a), (b))
#define FCD_STORE_N(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1u), (v))
#define FCD_MASK_T __mmask16
#define FCD_LANES(lo, hi) ((__mmask16)(((1u << (hi)) - 1u) & ~((1u << (lo)) - 1u)))
#define FCD_LOAD_MASKED(a, m, p) _mm512_mask_loadu_ps((a), (m), (p))
#define FCD_TRANSPOSE fc_transpose16_avx512
#define FCD_EVENS fcd_even16_avx512
#define FCD_DEINTERLEAVE fcd_deinterleave_avx512
#define FCD_INTERLEAVE fcd_interleave_avx512
#define FCD_PUT_PAIRS fcd_put_pairs_avx512
#define FCD_QUADS fcd_quads_avx512
#define FCD_DEAL4 fcd_deal4_avx512

static inline __mmask16 fcd_mask16(fcd_i n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

/* The n source floats s -> even columns e[0 .. ne), odd columns o[0 .. no) (ne, no <= what s
 * holds); 32 source values per two masked loads and two permutations. */
static inline void fcd_deinterleave_avx512(const float* s, fcd_i n, float* e, fcd_i ne, float* o, fcd_i no)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    fcd_i k;
    for (k = 0; k < ne || k < no; k += 16) {
        __m512 lo = _mm512_maskz_loadu_ps(fcd_mask16(n - 2 * k), s + 2 * k);
        __m512 hi = _mm512_maskz_loadu_ps(fcd_mask16(n - 2 * k - 16 > 0 ? n - 2 * k - 16 : 0), s + 2 * k + 16);
        if (k < ne)
            _mm512_mask_storeu_ps(e + k, fcd_mask16(ne - k), _mm512_permutex2var_ps(lo, ie, hi));
        if (k < no)
            _mm512_mask_storeu_ps(o + k, fcd_mask16(no - k), _mm512_permutex2var_ps(lo, io, hi));
    }
}

/* d[0 .. 32) = f(a[0]), f(c[0]), f(a[1]), f(c[1]), ..., f(v) = v + b, then the ReLU if relu
 * (as fcd_interleave_avx512, from registers). */
static inline void fcd_put_pairs_avx512(float* d, __m512 a, __m512 c, float b, int relu)
{
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 bv = _mm512_set1_ps(b), z = _mm512_setzero_ps();
    a = _mm512_add_ps(a, bv);
    c = _mm512_add_ps(c, bv);
    if (relu) {
        a = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, z, _CMP_LE_OQ), a, z);
        c = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, z, _CMP_LE_OQ), c, z);
    }
    _mm512_storeu_ps(d, _mm512_permutex2var_ps(a, il, c));
    _mm512_storeu_ps(d + 16, _mm512_permutex2var_ps(a, ih, c));
}

/* d[2e] = f(s0[e]), d[2e + 1] = f(s1[e]) for e < n, f(v) = v + b, then the ReLU if relu;
 * returns n (done by vectors of 16 pairs, the last one masked). */
static inline fcd_i fcd_interleave_avx512(const float* s0, const float* s1, fcd_i n, float b, int relu, float* d)
{
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 bv = _mm512_set1_ps(b), z = _mm512_setzero_ps();
    fcd_i k;
    for (k = 0; k < n; k += 16) {
        __m512 a = _mm512_add_ps(_mm512_loadu_ps(s0 + k), bv), c = _mm512_add_ps(_mm512_loadu_ps(s1 + k), bv);
        fcd_i m = 2 * (n - k);
        if (relu) {
            a = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, z, _CMP_LE_OQ), a, z);
            c = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, z, _CMP_LE_OQ), c, z);
        }
        _mm512_mask_storeu_ps(d + 2 * k, fcd_mask16(m), _mm512_permutex2var_ps(a, il, c));
        if (m > 16)
            _mm512_mask_storeu_ps(d + 2 * k + 16, fcd_mask16(m - 16), _mm512_permutex2var_ps(a, ih, c));
    }
    return n;
}

/* d[b ps + m] = s[4 m + b - o] for b < 4 and m < nm (zero where 4 m + b - o is not in [0, n)): a
 * row's four column phases, 64 source values per four masked loads and eight permutations. */
static inline void fcd_deal4_avx512(const float* s, fcd_i n, fcd_i o, float* d, fcd_i ps, fcd_i nm)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    fcd_i m, u;
    if (n <= 32) {  /* the row in two registers (nm <= 9): phase p's column m is s[4m + p - o] */
        const __m512i q = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
        __m512 x0 = _mm512_maskz_loadu_ps(fcd_mask16(n), s);
        __m512 x1 = _mm512_maskz_loadu_ps(fcd_mask16(n > 16 ? n - 16 : 0), s + 16);
        __mmask16 sm = fcd_mask16(nm);
        for (u = 0; u < 4; u++) {
            __m512i v = _mm512_add_epi32(q, _mm512_set1_epi32((int)(u - o)));  /* (source column) */
            __mmask16 in = _mm512_cmpge_epi32_mask(v, _mm512_setzero_si512())
                           & _mm512_cmplt_epi32_mask(v, _mm512_set1_epi32((int)n));
            _mm512_mask_storeu_ps(d + u * ps, sm, _mm512_maskz_permutex2var_ps(in, x0, v, x1));
        }
        return;
    }
    for (m = 0; m < nm; m += 16) {
        __m512 x[4];
        for (u = 0; u < 4; u++) {  /* source values k - o, k = 4 m + 16 u + lane, inside [0, n) */
            fcd_i k0 = 4 * m + 16 * u - o, lo = k0 < 0 ? -k0 : 0, hi = n - k0 < 16 ? n - k0 : 16;
            __mmask16 mk = hi > lo ? (__mmask16)(fcd_mask16(hi) & ~fcd_mask16(lo)) : 0;
            x[u] = _mm512_maskz_loadu_ps(mk, s + k0);
        }
        __m512 e01 = _mm512_permutex2var_ps(x[0], ie, x[1]), o01 = _mm512_permutex2var_ps(x[0], io, x[1]);
        __m512 e23 = _mm512_permutex2var_ps(x[2], ie, x[3]), o23 = _mm512_permutex2var_ps(x[2], io, x[3]);
        __mmask16 sm = fcd_mask16(nm - m);
        _mm512_mask_storeu_ps(d + m, sm, _mm512_permutex2var_ps(e01, ie, e23));
        _mm512_mask_storeu_ps(d + ps + m, sm, _mm512_permutex2var_ps(o01, ie, o23));
        _mm512_mask_storeu_ps(d + 2 * ps + m, sm, _mm512_permutex2var_ps(e01, io, e23));
        _mm512_mask_storeu_ps(d + 3 * ps + m, sm, _mm512_permutex2var_ps(o01, io, o23));
    }
}

/* d[4 l + k] = q[k][l], l < 16, k < 4: two rounds of pair interleaving. */
static inline void fcd_quads_avx512(const __m512* q, float* d)
{
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    __m512 p0 = _mm512_permutex2var_ps(q[0], il, q[2]), p1 = _mm512_permutex2var_ps(q[1], il, q[3]);
    __m512 p2 = _mm512_permutex2var_ps(q[0], ih, q[2]), p3 = _mm512_permutex2var_ps(q[1], ih, q[3]);
    _mm512_storeu_ps(d, _mm512_permutex2var_ps(p0, il, p1));
    _mm512_storeu_ps(d + 16, _mm512_permutex2var_ps(p0, ih, p1));
    _mm512_storeu_ps(d + 32, _mm512_permutex2var_ps(p2, il, p3));
    _mm512_storeu_ps(d + 48, _mm512_permutex2var_ps(p2, ih, p3));
}

/* d[0 .. n) = s[0], s[2], ..., s[2n - 2] (a stride-2 row of the input packing): two loads and
 * one permutation per 16 values, the last (partial) ones masked, so nothing past s[2n - 2] is
 * read. */
static inline void fcd_even16_avx512(float* d, const float* s, fcd_i n)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    fcd_i k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 lo = _mm512_loadu_ps(s + 2 * k);
        __m512 hi = _mm512_maskz_loadu_ps((__mmask16)0x7fff, s + 2 * k + 16);  /* (s[2k + 31] unread) */
        _mm512_storeu_ps(d + k, _mm512_permutex2var_ps(lo, even, hi));
    }
    if (k < n) {
        fcd_i r = 2 * (n - k) - 1;  /* source values s[2k] .. s[2n - 2] */
        __m512 lo = _mm512_maskz_loadu_ps((__mmask16)(r >= 16 ? 0xffffu : (1u << r) - 1u), s + 2 * k);
        __m512 hi = _mm512_maskz_loadu_ps((__mmask16)(r > 16 ? (1u << (r - 16)) - 1u : 0u), s + 2 * k + 16);
        _mm512_mask_storeu_ps(d + k, (__mmask16)((1u << (n - k)) - 1u), _mm512_permutex2var_ps(lo, even, hi));
    }
}

#include "transpose16.h"
#include "conv_direct_kern.h"
FC_TARGET_POP

/* 0 baseline, 1 avx2, 2 avx512: whether the CPU (and OS) support it. */
static int fcd_cpu_supports(int isa)
{
    __builtin_cpu_init();
    if (isa == 0) return 1;
    if (isa == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
               && __builtin_cpu_supports("fma");
    return 0;
}
#else
static int fcd_cpu_supports(int isa) { return isa == 0; }
#endif

/* The selected ISA's kernels and tile sizes (fcd_set_isa). */
static const fcd_isa_kernels* fcd_isa = &fcd_kernels_base;
#define fcd_fwd_image (fcd_isa->fwd_image)
#define fcd_fwd_image_ct (fcd_isa->fwd_image_ct)
#define fcd_bwd_weight_tile (fcd_isa->bwd_weight_tile)
#define fcd_fma_probe (fcd_isa->fma_probe)
#define fcd_pack_grad_t (fcd_isa->pack_grad_t)
#define fcd_pack_input (fcd_isa->pack_input)
#define fcd_unpack_output (fcd_isa->unpack_output)
#define fcd_interleave_phases (fcd_isa->interleave_phases)
#define fcd_unpool_grad_t (fcd_isa->unpool_grad_t)
#define fcd_grad_t_sums (fcd_isa->grad_t_sums)
#define fcd_spw_pass (fcd_isa->spw_pass)
#define fcd_spd_row (fcd_isa->spd_row)
#define fcd_pack_cl (fcd_isa->pack_cl)
#define fcw_images (fcd_isa->wino_images)
#define fcw_wgrad (fcd_isa->wino_wgrad)
#define fcw_pack_weights6 (fcd_isa->wino_weights6)
#define fcd_J (fcd_isa->J)
#define fcd_VL (fcd_isa->VL)
#define fcd_WT (fcd_isa->WT)
#define fcd_TM (fcd_isa->TM)
#define fcd_JC (fcd_isa->JC)
#define fcd_CR (fcd_isa->CR)

/* Select the kernels of ``isa`` (0 baseline, 1 avx2, 2 avx512); -1 if unsupported. */
static int fcd_set_isa(int isa)
{
    if (!fcd_cpu_supports(isa)) return -1;
    fcp_set_isa(isa);
    fps_set_isa(isa);
    fcd_isa = &fcd_kernels_base;
#ifdef FC_SIMD
    if (isa == 2) fcd_isa = &fcd_kernels_avx512;
    if (isa == 1) fcd_isa = &fcd_kernels_avx2;
#endif
    return 0;
}

#endif /* FASTCNN_CONV_DIRECT_H */
