/* An 8 x 8 block of floats transposed in AVX2 registers; include inside an AVX2 target region
 * (FC_TARGET_PUSH(FC_AVX2)): conv_direct.h, gemm.h. */
#ifndef FASTCNN_TRANSPOSE8_H
#define FASTCNN_TRANSPOSE8_H

/* r[i] (8 rows of 8 floats) -> r[j] = column j: unpack 32-bit pairs, then shuffle 64-bit
 * pairs (columns j and j + 4 of four rows in the two 128-bit lanes), then swap the lanes. */
static inline void fc_transpose8_avx2(__m256* r)
{
    __m256 t[8], u[8];
    int i;
    for (i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

#endif /* FASTCNN_TRANSPOSE8_H */
