/* Blocks of functions compiled for one x86-64 SIMD path inside an extension that is itself
 * built for baseline x86-64 (design: docs/PERFORMANCE.md, section 9):
 *     FC_TARGET_PUSH(FC_AVX512) ... functions ... FC_TARGET_POP
 * Used by conv_direct.h and norm_kern.h (x86-64 GCC/Clang only; see FC_SIMD). */
#ifndef FASTCNN_SIMD_H
#define FASTCNN_SIMD_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FC_SIMD 1
#define FC_STR(x) #x
#define FC_AVX2 "avx2,fma"
#define FC_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma"
#if defined(__clang__)
#define FC_TARGET_PUSH(t) _Pragma(FC_STR(clang attribute push(__attribute__((target(t))), apply_to = function)))
#define FC_TARGET_POP _Pragma("clang attribute pop")
#else
#define FC_TARGET_PUSH(t) _Pragma("GCC push_options") _Pragma(FC_STR(GCC target(t)))
#define FC_TARGET_POP _Pragma("GCC pop_options")
#endif

#include <immintrin.h>
#include <stddef.h>
#include <string.h>
FC_TARGET_PUSH(FC_AVX2)
/* The first n (0 .. 8) 32-bit lanes of v (floats: _mm256_castps_si256) to d by 8-, 4-, 2- and
 * 1-lane stores: AVX2's masked store (vmaskmovps to memory) is microcoded on AMD Zen, several
 * times slower. */
static inline void fc_store_n_avx2(void* d, __m256i v, ptrdiff_t n)
{
    char* p = (char*)d;
    __m128i h = _mm256_castsi256_si128(v);
    if (n >= 8) {
        _mm256_storeu_si256((__m256i*)p, v);
        return;
    }
    if (n >= 4) {
        _mm_storeu_si128((__m128i*)p, h);
        p += 16;
        n -= 4;
        h = _mm256_extracti128_si256(v, 1);
    }
    if (n >= 2) {
        _mm_storel_epi64((__m128i*)p, h);
        p += 8;
        n -= 2;
        h = _mm_srli_si128(h, 8);
    }
    if (n) {
        int last = _mm_cvtsi128_si32(h);
        memcpy(p, &last, 4);
    }
}
FC_TARGET_POP
#endif

/* name = the variant of the SIMD path isa (0 baseline, 1 avx2, 2 avx512; the caller checked
 * the CPU) of functions defined as name_base, name_avx2 and name_avx512. */
#ifdef FC_SIMD
#define FC_PICK(isa, name) ((name) = (isa) == 2 ? name##_avx512 : (isa) == 1 ? name##_avx2 : name##_base)
#else
#define FC_PICK(isa, name) ((name) = name##_base)
#endif

#endif /* FASTCNN_SIMD_H */
