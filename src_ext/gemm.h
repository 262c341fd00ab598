/* SGEMM of the dense layers (gemm_kern.h) compiled for the AVX-512 and AVX2 paths; the
 * baseline path has none (fcg_gemm is NULL: the caller uses SciPy's SGEMM).  Included by
 * dense.pyx; fcg_set_isa follows the direct convolutions' path. */
#ifndef FASTCNN_GEMM_H
#define FASTCNN_GEMM_H

#include <stddef.h>

#include "_simd.h"

#include <math.h>
#include <stdint.h>

typedef ptrdiff_t fcg_i;
typedef void (*fcg_transpose_fn)(const float*, fcg_i, fcg_i, fcg_i, const float*, float*, fcg_i);
typedef void (*fcg_gemm_fn)(fcg_i, fcg_i, fcg_i, const float*, fcg_i, fcg_i, const float*, fcg_i,
                            fcg_i, float*, fcg_i, int);

#ifdef FC_SIMD
#include <immintrin.h>

FC_TARGET_PUSH(FC_AVX2)
#define FCG_SUFFIX avx2
#define FCG_VL 8
#define FCG_R 6
#define FCG_V 2
#define FCG_KC 128
#define FCG_VT __m256
#define FCG_MASK_T __m256i
#define FCG_MASK_N(n) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define FCG_LOAD(p) _mm256_loadu_ps(p)
#define FCG_LOAD_M(p, mk) _mm256_maskload_ps((p), (mk))
#define FCG_STORE(p, v) _mm256_storeu_ps((p), (v))
#define FCG_STREAM(p, v) _mm256_stream_ps((p), (v))
#define FCG_STORE_M(p, mk, v) _mm256_maskstore_ps((p), (mk), (v))
#define FCG_SET1(s) _mm256_set1_ps(s)
#define FCG_ZERO() _mm256_setzero_ps()
#define FCG_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define FCG_ADD(a, b) _mm256_add_ps((a), (b))
#include "transpose8.h"
#define FCG_TRANSPOSE fc_transpose8_avx2
#include "gemm_kern.h"
#include "rows_kern.h"
#undef FCG_SUFFIX
#undef FCG_VL
#undef FCG_R
#undef FCG_V
#undef FCG_KC
#undef FCG_VT
#undef FCG_MASK_T
#undef FCG_MASK_N
#undef FCG_LOAD
#undef FCG_LOAD_M
#undef FCG_STORE
#undef FCG_STREAM
#undef FCG_STORE_M
#undef FCG_SET1
#undef FCG_ZERO
#undef FCG_FMA
#undef FCG_ADD
#undef FCG_TRANSPOSE
FC_TARGET_POP

FC_TARGET_PUSH(FC_AVX512)
#define FCG_SUFFIX avx512
#define FCG_VL 16
#define FCG_R 6
#define FCG_V 4
#define FCG_KC 128
#define FCG_VT __m512
#define FCG_MASK_T __mmask16
#define FCG_MASK_N(n) ((__mmask16)((1u << (n)) - 1u))
#define FCG_LOAD(p) _mm512_loadu_ps(p)
#define FCG_LOAD_M(p, mk) _mm512_maskz_loadu_ps((mk), (p))
#define FCG_STORE(p, v) _mm512_storeu_ps((p), (v))
#define FCG_STREAM(p, v) _mm512_stream_ps((p), (v))
#define FCG_STORE_M(p, mk, v) _mm512_mask_storeu_ps((p), (mk), (v))
#define FCG_SET1(s) _mm512_set1_ps(s)
#define FCG_ZERO() _mm512_setzero_ps()
#define FCG_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define FCG_ADD(a, b) _mm512_add_ps((a), (b))
#include "transpose16.h"
#define FCG_TRANSPOSE fc_transpose16_avx512
#include "gemm_kern.h"
#include "rows_kern.h"
FC_TARGET_POP
#endif

/* The rows path of small batches (rows_kern.h) as portable C: the baseline path's. */
#undef FCG_SUFFIX
#undef FCG_VL
#define FCG_SUFFIX base
#define FCG_VL 0
#include "rows_kern.h"
#undef FCG_SUFFIX
#undef FCG_VL

typedef void (*fcr_forward_fn)(fcg_i, fcg_i, fcg_i, const float*, const float*, const float*, float*,
                               fcg_i, fcg_i);
typedef void (*fcr_chains_fn)(fcg_i, fcg_i, const float*, fcg_i, fcg_i, const float*, fcg_i, float*,
                              fcg_i, fcg_i, fcg_i);
static fcr_forward_fn fcr_forward = fcr_forward_base;
static fcr_chains_fn fcr_chains = fcr_chains_base;

/* The selected path's SGEMM (NULL: baseline) and its column-tile width. */
static fcg_gemm_fn fcg_gemm = NULL;
static fcg_transpose_fn fcg_transpose = NULL;
static fcg_i fcg_W = 0;

/* 0 baseline, 1 avx2, 2 avx512 (as fcd_set_isa; the caller checked the CPU). */
static void fcg_set_isa(int isa)
{
    fcg_gemm = NULL;
    fcg_transpose = NULL;
    fcg_W = 0;
    fcr_forward = fcr_forward_base;
    fcr_chains = fcr_chains_base;
#ifdef FC_SIMD
    if (isa == 2) {
        fcg_gemm = fcg_gemm_avx512; fcg_transpose = fcg_transpose_avx512; fcg_W = 64;
        fcr_forward = fcr_forward_avx512; fcr_chains = fcr_chains_avx512;
    }
    if (isa == 1) {
        fcg_gemm = fcg_gemm_avx2; fcg_transpose = fcg_transpose_avx2; fcg_W = 16;
        fcr_forward = fcr_forward_avx2; fcr_chains = fcr_chains_avx2;
    }
#endif
}

#endif /* FASTCNN_GEMM_H */
