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
#endif

#endif /* FASTCNN_SIMD_H */
