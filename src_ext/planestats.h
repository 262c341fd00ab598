/* Batch-norm statistics of one plane (x[0:P], float32, P >= 1): fps_plane_stats(x, P, sd)
 * writes sd[0] = sum(x) and sd[1] = sum((x - mean)**2), both in double, in one pass around the
 * plane's first value K = x[0]: the sums of d = x - K and of d * d, value e into partial sums
 * e % FPS_LANES (eight vectors each, lane l of vector j = partial 8 j + l; the last block's
 * missing values add 0.0), the partial sums folded in halves (p[k] += p[k + h] for h = 32, 16,
 * ..., 1), then sd[0] = K * P + S' and sd[1] = max(Q - (S' * S') / P, 0) (S', Q the two sums;
 * the shift keeps the cancellation small: docs/PERFORMANCE.md, section 13).  The Numba kernels
 * do the same operations (fastcnn/_kernels/norm.py, plane_stats).  The batch-norm statistics
 * (norm.pyx) and the convolutions' fused statistics (conv_direct.pyx) both combine these
 * per-plane sums (fps_combine), so the two give the same bytes.  Compiled for each SIMD path
 * (only its speed differs); each extension that includes this header has its own copy and
 * sets it from the direct convolutions' path (fps_set_isa). */
#ifndef FASTCNN_PLANESTATS_H
#define FASTCNN_PLANESTATS_H

#include <stddef.h>

#include "_simd.h"

#define FPS_LANES 64

/* Eight float64 lanes (GCC vector extensions: the same lane-by-lane arithmetic on every path),
 * eight float32 lanes, and a lane mask. */
typedef double fps_v8d __attribute__((vector_size(64)));
typedef float fps_v8f __attribute__((vector_size(32)));
typedef long long fps_v8l __attribute__((vector_size(64)));

/* p[0] + ... + p[7] of one vector after the fold of its eight vectors: lanes 0-3 += 4-7,
 * 0-1 += 2-3, 0 += 1. */
static inline __attribute__((always_inline)) double fps_lanes(fps_v8d a)
{
    fps_v8d d = a + __builtin_shuffle(a, (fps_v8l){4, 5, 6, 7, 0, 0, 0, 0});
    d = d + __builtin_shuffle(d, (fps_v8l){2, 3, 0, 0, 0, 0, 0, 0});
    return d[0] + d[1];
}

/* The 64 partial sums of d (A) and of d * d (Q), eight vectors each, folded in halves, then
 * sd[0] = K P + S' and sd[1] = max(Q' - S'^2 / P, 0). */
static inline __attribute__((always_inline)) void fps_finish(fps_v8d* A, fps_v8d* Q, double K, ptrdiff_t P,
                                                             double* sd)
{
    double s, ss;
    A[0] += A[4]; A[1] += A[5]; A[2] += A[6]; A[3] += A[7]; Q[0] += Q[4]; Q[1] += Q[5]; Q[2] += Q[6]; Q[3] += Q[7];
    A[0] += A[2]; A[1] += A[3]; Q[0] += Q[2]; Q[1] += Q[3];
    A[0] += A[1]; Q[0] += Q[1];
    s = fps_lanes(A[0]);
    ss = fps_lanes(Q[0]) - (s * s) / (double)P;
    sd[0] = K * (double)P + s;
    sd[1] = ss > 0.0 ? ss : 0.0;
}

/* a_j += d, q_j += d * d for d = the eight values at p (as double) - K, lanes at or past n
 * (if n < 8) giving d = 0 */
#define FPS_TERM(CVT8, a, q, p, n) do {                                                          \
    fps_v8d d_ = CVT8(p) - K;                                                                 \
    if ((n) < 8) d_ = (fps_v8d)((fps_v8l)d_ & ((fps_v8l){0, 1, 2, 3, 4, 5, 6, 7} < (n)));     \
    a += d_;                                                                                  \
    q += d_ * d_;                                                                             \
} while (0)
#define FPS_BLOCK(CVT8, p, n) do {                                                            \
    FPS_TERM(CVT8, a0, q0, (p), (n));      FPS_TERM(CVT8, a1, q1, (p) + 8, (n) - 8);          \
    FPS_TERM(CVT8, a2, q2, (p) + 16, (n) - 16); FPS_TERM(CVT8, a3, q3, (p) + 24, (n) - 24);   \
    FPS_TERM(CVT8, a4, q4, (p) + 32, (n) - 32); FPS_TERM(CVT8, a5, q5, (p) + 40, (n) - 40);   \
    FPS_TERM(CVT8, a6, q6, (p) + 48, (n) - 48); FPS_TERM(CVT8, a7, q7, (p) + 56, (n) - 56);   \
} while (0)

#define FPS_BODY(SUFFIX, CVT8)                                                                \
static void fps_plane_stats_##SUFFIX(const float* x, ptrdiff_t P, double* sd)                 \
{                                                                                             \
    const fps_v8d z = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};                               \
    const double K = (double)x[0];                                                            \
    fps_v8d a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;                   \
    fps_v8d q0 = z, q1 = z, q2 = z, q3 = z, q4 = z, q5 = z, q6 = z, q7 = z;                   \
    ptrdiff_t e0;                                                                             \
    for (e0 = 0; e0 + FPS_LANES <= P; e0 += FPS_LANES)                                        \
        FPS_BLOCK(CVT8, x + e0, FPS_LANES);                                                   \
    if (e0 < P) {                                                                             \
        float t[FPS_LANES];                                                                   \
        ptrdiff_t j, r = P - e0;                                                              \
        for (j = 0; j < FPS_LANES; j++) t[j] = j < r ? x[e0 + j] : 0.0f;                      \
        FPS_BLOCK(CVT8, t, r);                                                                \
    }                                                                                         \
    {                                                                                         \
        fps_v8d A[8] = {a0, a1, a2, a3, a4, a5, a6, a7}, Q[8] = {q0, q1, q2, q3, q4, q5, q6, q7}; \
        fps_finish(A, Q, K, P, sd);                                                           \
    }                                                                                         \
}

/* Eight floats at p, converted to double (exactly); a macro, not a function returning a
 * 64-byte vector (whose ABI differs between the paths). */
#define fps_cvt8(p) ({ fps_v8f f_; __builtin_memcpy(&f_, (p), sizeof f_); __builtin_convertvector(f_, fps_v8d); })

FPS_BODY(base, fps_cvt8)
#ifdef FC_SIMD
#include <immintrin.h>
FC_TARGET_PUSH(FC_AVX2)
/* fps_plane_stats_base's operations on AVX2's 16 registers: the 64 partial sums of d and of
 * d * d are 32 ymm, which FPS_BODY keeps on the stack; here the plane is
 * read in four passes of 16 partial sums each (8 ymm), each pass taking its 16 values of every
 * block of 64: every partial sum gets the same terms in the same order, then the same folds. */
static inline __attribute__((always_inline)) void fps_term4_avx2(const float* p, ptrdiff_t n, __m256d K,
                                                                 __m256d* a, __m256d* q)
{
    __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p)), K);
    if (n < 4)  /* lanes at or past n: d = +0.0 */
        d = _mm256_and_pd(d, _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)n),
                                                                     _mm256_setr_epi64x(0, 1, 2, 3))));
    *a = _mm256_add_pd(*a, d);
    *q = _mm256_add_pd(*q, _mm256_mul_pd(d, d));
}

static void fps_plane_stats_avx2(const float* x, ptrdiff_t P, double* sd)
{
    union { __m256d h[16]; fps_v8d v[8]; } A, Q;  /* partial sums 0 .. 63 of d and of d * d */
    const double K = (double)x[0];
    const __m256d Kv = _mm256_set1_pd(K);
    float t[FPS_LANES];
    ptrdiff_t e0, j, u, r = P % FPS_LANES, full = P - r;
    for (j = 0; j < FPS_LANES; j++)
        t[j] = j < r ? x[full + j] : 0.0f;
    for (u = 0; u < 16; u += 4) {  /* pass: partial sums 4u .. 4u + 15 */
        __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0, q0 = a0, q1 = a0, q2 = a0, q3 = a0;
        for (e0 = 0; e0 < full; e0 += FPS_LANES) {
            const float* p = x + e0 + 4 * u;
            fps_term4_avx2(p, 4, Kv, &a0, &q0);
            fps_term4_avx2(p + 4, 4, Kv, &a1, &q1);
            fps_term4_avx2(p + 8, 4, Kv, &a2, &q2);
            fps_term4_avx2(p + 12, 4, Kv, &a3, &q3);
        }
        if (r) {
            const float* p = t + 4 * u;
            fps_term4_avx2(p, r - 4 * u, Kv, &a0, &q0);
            fps_term4_avx2(p + 4, r - 4 * u - 4, Kv, &a1, &q1);
            fps_term4_avx2(p + 8, r - 4 * u - 8, Kv, &a2, &q2);
            fps_term4_avx2(p + 12, r - 4 * u - 12, Kv, &a3, &q3);
        }
        A.h[u] = a0, A.h[u + 1] = a1, A.h[u + 2] = a2, A.h[u + 3] = a3;
        Q.h[u] = q0, Q.h[u + 1] = q1, Q.h[u + 2] = q2, Q.h[u + 3] = q3;
    }
    fps_finish(A.v, Q.v, K, P, sd);
}
FC_TARGET_POP
FC_TARGET_PUSH(FC_AVX512)
/* (one vcvtps2pd: GCC lowered the generic conversion to two halves and an insert) */
#define FPS_CVT8_AVX512(p) ((fps_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p)))
FPS_BODY(avx512, FPS_CVT8_AVX512)
FC_TARGET_POP
#endif

typedef void (*fps_fn)(const float*, ptrdiff_t, double*);
static fps_fn fps_plane_stats = fps_plane_stats_base;

/* The path isa's variant (as fcd_set_isa). */
static void fps_set_isa(int isa) { FC_PICK(isa, fps_plane_stats); }

/* Each of C channels' mean and biased variance from its N planes' sums sd (N, C, 2:
 * fps_plane_stats of plane (n, c) at sd + 2 (n C + c); P values each): mean = sum_n S_n / (N P),
 * var = sum_n (D_n + (t_n t_n) P) / (N P), t_n = S_n / P - mean (the exact split of the squared
 * deviations by plane), sums in order of n. */
static inline void fps_combine(const double* sd, ptrdiff_t N, ptrdiff_t C, ptrdiff_t P, double* mean,
                               double* var)
{
    double M = (double)N * (double)P, s, v, mu, t;
    ptrdiff_t n, c;
    for (c = 0; c < C; c++) {
        const double* p = sd + 2 * c;
        for (s = 0.0, n = 0; n < N; n++) s += p[2 * C * n];
        mu = s / M;
        for (v = 0.0, n = 0; n < N; n++) {
            t = p[2 * C * n] / (double)P - mu;
            v += p[2 * C * n + 1] + (t * t) * (double)P;
        }
        mean[c] = mu;
        var[c] = v / M;
    }
}

#endif /* FASTCNN_PLANESTATS_H */
