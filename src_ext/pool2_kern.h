/* 2x2 max pooling (stride 2) of whole planes, compiled once per SIMD path by pool2.h inside
 * its FC_TARGET blocks, with FCP_SUFFIX defined (and FCP_AVX512 or FCP_AVX2 on those paths).  The
 * pooling kernels' scan rule (_maxpool_plane, fastcnn._ref.maxpool2d_forward): a later cell of
 * the window replaces the best if it is not <= it (greater, or NaN), unless the best is NaN
 * already. */
#define FCP_CAT_(a, b) a##_##b
#define FCP_CAT(a, b) FCP_CAT_(a, b)
#define FCP_NAME(n) FCP_CAT(n, FCP_SUFFIX)

#ifdef FCP_AVX512
/* One row: the windows of rows r0, r1 (2 * PW floats each) -> yr[0 .. PW) and ir (flat indices
 * base + column + row * w if flat, else the window positions 0..3), by vectors of 16 windows
 * (the last masked). */
static inline void FCP_NAME(fcp_row)(const float* r0, const float* r1, ptrdiff_t PW, float* yr, int* ir,
                                     int base, int w, int flat)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    ptrdiff_t k;
    for (k = 0; k < PW; k += 16) {
        ptrdiff_t n = PW - k < 16 ? PW - k : 16;
        __mmask16 lo = (__mmask16)(2 * n >= 16 ? 0xffffu : (1u << (2 * n)) - 1u);
        __mmask16 hi = (__mmask16)(2 * n > 16 ? (1u << (2 * n - 16)) - 1u : 0u);
        __mmask16 out = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u);
        __m512 x0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * k), x1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * k + 16);
        __m512 y0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * k), y1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * k + 16);
        __m512 m = _mm512_permutex2var_ps(x0, ie, x1), a[3];
        __m512i code = _mm512_setzero_si512();
        int j;
        a[0] = _mm512_permutex2var_ps(x0, io, x1);
        a[1] = _mm512_permutex2var_ps(y0, ie, y1);
        a[2] = _mm512_permutex2var_ps(y0, io, y1);
        for (j = 0; j < 3; j++) {
            __mmask16 c = _mm512_cmp_ps_mask(a[j], m, _CMP_NLE_UQ) & _mm512_cmp_ps_mask(m, m, _CMP_ORD_Q);
            m = _mm512_mask_mov_ps(m, c, a[j]);
            code = _mm512_mask_mov_epi32(code, c, _mm512_set1_epi32(j + 1));
        }
        _mm512_mask_storeu_ps(yr + k, out, m);
        if (flat)  /* (code & 1) columns right, (code >> 1) rows down */
            code = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_set1_epi32(base + 2 * (int)k), ie),  /* (ie: 2 * lane) */
                _mm512_add_epi32(_mm512_and_si512(code, _mm512_set1_epi32(1)),
                                 _mm512_and_si512(_mm512_sub_epi32(_mm512_setzero_si512(), _mm512_srli_epi32(code, 1)),
                                                  _mm512_set1_epi32(w))));
        _mm512_mask_storeu_epi32(ir + k, out, code);
    }
}
#endif

#ifdef FCP_AVX2
/* fcp_row of the AVX-512 path by vectors of 8 windows: a row's 16 floats deinterleaved by
 * in-lane shuffles and a 64-bit permutation, the compares' masks applied by blends. */
static inline __m256 FCP_NAME(fcp_even)(__m256 a, __m256 b, int odd)
{
    __m256 s = odd ? _mm256_shuffle_ps(a, b, 0xdd) : _mm256_shuffle_ps(a, b, 0x88);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xd8));
}
static inline void FCP_NAME(fcp_row)(const float* r0, const float* r1, ptrdiff_t PW, float* yr, int* ir,
                                     int base, int w, int flat)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    ptrdiff_t k;
    for (k = 0; k < PW; k += 8) {
        int n = PW - k < 8 ? (int)(PW - k) : 8;
        __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * n), lane);
        __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * n - 8), lane);
        __m256 x0, x1, y0, y1;
        if (n == 8) {  /* (whole vectors: plain loads; the stores: fc_store_n_avx2) */
            x0 = _mm256_loadu_ps(r0 + 2 * k), x1 = _mm256_loadu_ps(r0 + 2 * k + 8);
            y0 = _mm256_loadu_ps(r1 + 2 * k), y1 = _mm256_loadu_ps(r1 + 2 * k + 8);
        } else {
            x0 = _mm256_maskload_ps(r0 + 2 * k, lo), x1 = _mm256_maskload_ps(r0 + 2 * k + 8, hi);
            y0 = _mm256_maskload_ps(r1 + 2 * k, lo), y1 = _mm256_maskload_ps(r1 + 2 * k + 8, hi);
        }
        __m256 m = FCP_NAME(fcp_even)(x0, x1, 0), a[3], code = _mm256_setzero_ps();
        __m256i ci;
        int j;
        a[0] = FCP_NAME(fcp_even)(x0, x1, 1);
        a[1] = FCP_NAME(fcp_even)(y0, y1, 0);
        a[2] = FCP_NAME(fcp_even)(y0, y1, 1);
        for (j = 0; j < 3; j++) {
            __m256 c = _mm256_and_ps(_mm256_cmp_ps(a[j], m, _CMP_NLE_UQ), _mm256_cmp_ps(m, m, _CMP_ORD_Q));
            m = _mm256_blendv_ps(m, a[j], c);
            code = _mm256_blendv_ps(code, _mm256_castsi256_ps(_mm256_set1_epi32(j + 1)), c);
        }
        fc_store_n_avx2(yr + k, _mm256_castps_si256(m), n);
        ci = _mm256_castps_si256(code);
        if (flat)  /* (code & 1) columns right, (code >> 1) rows down */
            ci = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_set1_epi32(base + 2 * (int)k), _mm256_add_epi32(lane, lane)),
                _mm256_add_epi32(_mm256_and_si256(ci, _mm256_set1_epi32(1)),
                                 _mm256_and_si256(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_srli_epi32(ci, 1)),
                                                  _mm256_set1_epi32(w))));
        fc_store_n_avx2(ir + k, ci, n);
    }
}
#endif

/* ``planes`` consecutive (OH, OW) planes of ``full`` -> out ((OH/2)*(OW/2) per plane) with the
 * flat arg-max indices into ``io``, or, if ``io`` is NULL, the window positions 0..3 into
 * ``scratch`` (one pooled plane). */
static void FCP_NAME(fcp_pool_planes)(const float* full, float* out, int* io, int* scratch, ptrdiff_t planes,
                                      ptrdiff_t OH, ptrdiff_t OW)
{
    ptrdiff_t PH = OH / 2, PW = OW / 2, p, a, b;
    for (p = 0; p < planes; p++)
        for (a = 0; a < PH; a++) {
            const float* r0 = full + (p * OH + 2 * a) * OW;
            const float* r1 = r0 + OW;
            float* yr = out + (p * PH + a) * PW;
            int* ir = io ? io + (p * PH + a) * PW : scratch + a * PW;
            int base = (int)(2 * a * OW), w = (int)OW;
#if defined(FCP_AVX512) || defined(FCP_AVX2)
            FCP_NAME(fcp_row)(r0, r1, PW, yr, ir, base, w, io != NULL);
            continue;
#endif
            for (b = 0; b < PW; b++) {  /* (this form vectorises; loads between the tests did not) */
                float m = r0[2 * b], a1 = r0[2 * b + 1], a2 = r1[2 * b], a3 = r1[2 * b + 1];
                int code = 0;
                if (!(a1 <= m) && m == m) { m = a1; code = 1; }
                if (!(a2 <= m) && m == m) { m = a2; code = 2; }
                if (!(a3 <= m) && m == m) { m = a3; code = 3; }
                yr[b] = m;
                ir[b] = code;
            }
            if (io)
                for (b = 0; b < PW; b++)
                    ir[b] = base + 2 * (int)b + (ir[b] & 1) + (-(ir[b] >> 1) & w);
        }
}

#undef FCP_SUFFIX
#undef FCP_AVX512
#undef FCP_AVX2
