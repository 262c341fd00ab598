/* 2x2 max pooling of whole planes (pool2_kern.h) compiled for each SIMD path, and the one
 * chosen: ``fcp_pool_planes`` (baseline until fcp_set_isa).  Each extension that includes this
 * header has its own copy and sets it from the direct convolutions' path (conv_direct.h,
 * norm_kern.h, pool.pyx). */
#ifndef FASTCNN_POOL2_H
#define FASTCNN_POOL2_H

#include <stddef.h>

#include "_simd.h"

#define FCP_SUFFIX base
#include "pool2_kern.h"

#ifdef FC_SIMD
#include <immintrin.h>
FC_TARGET_PUSH(FC_AVX2)
#define FCP_SUFFIX avx2
#define FCP_AVX2 1
#include "pool2_kern.h"
FC_TARGET_POP
FC_TARGET_PUSH(FC_AVX512)
#define FCP_SUFFIX avx512
#define FCP_AVX512 1
#include "pool2_kern.h"
FC_TARGET_POP
#endif

typedef void (*fcp_pool_fn)(const float*, float*, int*, int*, ptrdiff_t, ptrdiff_t, ptrdiff_t);
static fcp_pool_fn fcp_pool_planes = fcp_pool_planes_base;

/* The path isa's variant (as fcd_set_isa). */
static void fcp_set_isa(int isa) { FC_PICK(isa, fcp_pool_planes); }

#endif /* FASTCNN_POOL2_H */
