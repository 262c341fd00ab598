/* Adam's element loop (optim.pyx), compiled once per SIMD path (AVX-512, AVX2, portable
 * baseline) and chosen at run time with the direct convolutions' path (fok_set_isa;
 * FASTCNN_ISA forces it).  A square root and a division per element: at the baseline's four
 * lanes the loop was bound by them, not by memory (docs/PERFORMANCE.md, section 8).  The
 * reference's float32 operations in its order, without contraction (-ffp-contract=off,
 * setup.py; IEEE square root and division on every path): every path gives its bytes. */
#ifndef FASTCNN_OPTIM_KERN_H
#define FASTCNN_OPTIM_KERN_H

#include <math.h>
#include <stddef.h>

#include "_simd.h"

typedef ptrdiff_t fok_i;

/* p, m, v IN/OUT; g IN (n elements) */
#define FOK_BODY(SUFFIX)                                                                      \
static void fok_adam_##SUFFIX(float* p, const float* g, float* m, float* v, fok_i n, float lr_t, \
                              float c1, float b2, float c2, float eps, float bc2)              \
{                                                                                             \
    for (fok_i e = 0; e < n; e++) {                                                           \
        float gi = g[e], mi = m[e];                                                           \
        mi = mi + c1 * (gi - mi);                                                             \
        float vi = v[e] * b2 + (gi * gi) * c2;                                                \
        m[e] = mi;                                                                            \
        v[e] = vi;                                                                            \
        p[e] = p[e] - (mi / (sqrtf(vi) / bc2 + eps)) * lr_t;                                  \
    }                                                                                         \
}

FOK_BODY(base)

#ifdef FC_SIMD
FC_TARGET_PUSH(FC_AVX2)
FOK_BODY(avx2)
FC_TARGET_POP
FC_TARGET_PUSH(FC_AVX512)
FOK_BODY(avx512)
FC_TARGET_POP
#endif

typedef void (*fok_adam_fn)(float*, const float*, float*, float*, fok_i, float, float, float, float, float,
                            float);
static fok_adam_fn fok_adam = fok_adam_base;

/* 0 baseline, 1 avx2, 2 avx512 (as fcd_set_isa; the caller checked the CPU). */
static void fok_set_isa(int isa)
{
    FC_PICK(isa, fok_adam);
}

#endif /* FASTCNN_OPTIM_KERN_H */
