/* Plane loops of the BatchNorm2D kernels (norm.pyx), compiled once per SIMD path (AVX-512,
 * AVX2, portable baseline) and chosen at run time with the direct convolutions' path
 * (fnk_set_isa; FASTCNN_ISA forces it).  Element-wise loops without contraction
 * (-ffp-contract=off, setup.py): every path gives the reference's bytes. */
#ifndef FASTCNN_NORM_KERN_H
#define FASTCNN_NORM_KERN_H

#include <stddef.h>

#include "_simd.h"
#include "planestats.h"
#include "pool2.h"

typedef ptrdiff_t fnk_i;

/* The reductions walk a channel's planes, one per image (C planes apart): too short a run
 * for the hardware prefetcher, so each run of FNK_RUN floats (four cache lines) asks for the
 * same lines of the next image's plane (a prefetch past the array does not fault). */
#define FNK_RUN 64
#define FNK_PREFETCH(p) do { const char* p_ = (const char*)(p); __builtin_prefetch(p_, 0, 3); \
    __builtin_prefetch(p_ + 64, 0, 3); __builtin_prefetch(p_ + 128, 0, 3); __builtin_prefetch(p_ + 192, 0, 3); } while (0)

#define FNK_BODY(SUFFIX)                                                                      \
/* g[e] through the ReLU of h[e] * w + b (float32: relu_backward's product by 0 or 1) */            \
static inline float fnk_mask_##SUFFIX(float g, float h, float w, float b)                     \
{ float v = h * w + b; return g * (v > 0.0f ? 1.0f : 0.0f); }                                 \
/* accs[e] += g, accd[e] += g * h in double (exact products), h = (x[e] - mu) * s (float32, \
 * the forward's xhat); g = g[e], masked if relu */                                           \
static void fnk_acc_plane_sum_dot_##SUFFIX(double* accs, double* accd, const float* g,        \
                                           const float* x, fnk_i P, float mu, float s, float w, \
                                           float b, int relu, fnk_i D)                         \
{                                                                                             \
    for (fnk_i e0 = 0; e0 < P; e0 += FNK_RUN) {                                               \
        fnk_i e1 = e0 + FNK_RUN < P ? e0 + FNK_RUN : P;                                       \
        FNK_PREFETCH(g + D + e0);                                                             \
        FNK_PREFETCH(x + D + e0);                                                             \
        if (relu)                                                                             \
            for (fnk_i e = e0; e < e1; e++) {                                                 \
                float h = (x[e] - mu) * s;                                                    \
                double gv = fnk_mask_##SUFFIX(g[e], h, w, b);                                 \
                accs[e] += gv; accd[e] += gv * (double)h;                                     \
            }                                                                                 \
        else                                                                                  \
            for (fnk_i e = e0; e < e1; e++) {                                                 \
                double gv = g[e]; accs[e] += gv; accd[e] += gv * (double)((x[e] - mu) * s);   \
            }                                                                                 \
    }                                                                                         \
}                                                                                             \
/* y = ((x - mu) * s) * w + b (plus r[e] unless r is NULL; then the ReLU kernels' rule if     \
 * relu), float32 */                                                                          \
static void fnk_fwd_plane_##SUFFIX(const float* x, const float* r, float* y, fnk_i P, float mu,\
                                   float s, float w, float b, int relu)                       \
{                                                                                             \
    fnk_i e;                                                                                  \
    if (r && relu)                                                                            \
        for (e = 0; e < P; e++) {                                                             \
            float v = (((x[e] - mu) * s) * w + b) + r[e]; y[e] = v <= 0.0f ? 0.0f : v;        \
        }                                                                                     \
    else if (r)                                                                               \
        for (e = 0; e < P; e++) y[e] = (((x[e] - mu) * s) * w + b) + r[e];                    \
    else if (relu)                                                                            \
        for (e = 0; e < P; e++) {                                                             \
            float v = ((x[e] - mu) * s) * w + b; y[e] = v <= 0.0f ? 0.0f : v;                 \
        }                                                                                     \
    else                                                                                      \
        for (e = 0; e < P; e++) y[e] = ((x[e] - mu) * s) * w + b;                             \
}                                                                                             \
/* gx = (g - (xh * b + a)) * sc, xh = (x - mu) * s, float32; g = gy[e], masked through the     \
 * ReLU of xh * w + bb */                                                                     \
static void fnk_bwd_plane_##SUFFIX(const float* gy, const float* x, float* gx, fnk_i P,        \
                                   float mu, float s, float sc, float a, float b, float w,    \
                                   float bb, int relu)                                        \
{                                                                                             \
    if (relu)                                                                                 \
        for (fnk_i e = 0; e < P; e++) {                                                       \
            float h = (x[e] - mu) * s;                                                        \
            gx[e] = (fnk_mask_##SUFFIX(gy[e], h, w, bb) - (h * b + a)) * sc;                  \
        }                                                                                     \
    else                                                                                      \
        for (fnk_i e = 0; e < P; e++) {                                                       \
            float h = (x[e] - mu) * s; gx[e] = (gy[e] - (h * b + a)) * sc;                    \
        }                                                                                     \
}                                                                                             \
static const fnk_table fnk_table_##SUFFIX = {                                                 \
    fnk_acc_plane_sum_dot_##SUFFIX, fnk_fwd_plane_##SUFFIX, fnk_bwd_plane_##SUFFIX};

typedef struct {
    void (*acc_plane_sum_dot)(double*, double*, const float*, const float*, fnk_i, float, float, float, float,
                              int, fnk_i);
    void (*fwd_plane)(const float*, const float*, float*, fnk_i, float, float, float, float, int);
    void (*bwd_plane)(const float*, const float*, float*, fnk_i, float, float, float, float, float, float,
                      float, int);
} fnk_table;

FNK_BODY(base)

#ifdef FC_SIMD
FC_TARGET_PUSH(FC_AVX2)
FNK_BODY(avx2)
FC_TARGET_POP
FC_TARGET_PUSH(FC_AVX512)
FNK_BODY(avx512)
FC_TARGET_POP
#endif

/* The selected path's loops (fnk_set_isa: 0 baseline, 1 avx2, 2 avx512, as conv_direct.h). */
static const fnk_table* fnk = &fnk_table_base;

static void fnk_set_isa(int isa)
{
    fcp_set_isa(isa);  /* (the pooled forward's plane pooling) */
    fps_set_isa(isa);  /* (the statistics' plane sums) */
    fnk = &fnk_table_base;
#ifdef FC_SIMD
    if (isa == 2) fnk = &fnk_table_avx512;
    if (isa == 1) fnk = &fnk_table_avx2;
#endif
}

#endif /* FASTCNN_NORM_KERN_H */
