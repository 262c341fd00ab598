/* The dense layers' rows path (small batches, docs/PERFORMANCE.md, section 3), compiled once
 * per SIMD path by gemm.h with gemm_kern.h's macros, and once as portable C (FCG_SUFFIX
 * base, FCG_VL 0: no vectors, a multiply and an add for each FMA).
 *
 *   forward  y[i, o] = dot16(x[i], w[o]) + bias[o]: lane j < 16 the FMA chain over the inner
 *            indices p = j mod 16 in order; the lanes then summed 16 -> 8 -> 4 -> 2 -> 1
 *            (s[j] += s[j + h]).  Sixteen lanes on every path: AVX2 and AVX-512 give the
 *            same bytes.
 *   gw[o]    the FMA chain over the batch in order (as fcg_gemm: the same bytes)
 *   gx[i]    the FMA chain over the outputs in order (as fcg_gemm)
 *
 * Each function covers a range of outputs (forward, gw) or of inner indices (gx): any split
 * gives the same bytes. */
#define FCR_CAT2(a, b) a##_##b
#define FCR_CAT(a, b) FCR_CAT2(a, b)
#define FCR_NAME(n) FCR_CAT(n, FCG_SUFFIX)

#if FCG_VL
#define FCR_NV (16 / FCG_VL)
#define FCR_FMA1(a, b, c) fmaf((a), (b), (c))
#else
#define FCR_FMA1(a, b, c) ((c) + (a) * (b))
#endif

/* R outputs (w's rows o .. o+R-1) of one input row xi. */
static inline __attribute__((always_inline)) void
FCR_NAME(fcr_dots)(const int R, const float* xi, const float* w, fcg_i k, const float* bias, float* y)
{
    const fcg_i k16 = k - k % 16;
    float s[4][16];
    fcg_i p;
    int r, j;
#if FCG_VL
    FCG_VT acc[4][FCR_NV];
    FCG_UNROLL for (r = 0; r < R; r++)
        FCG_UNROLL for (j = 0; j < FCR_NV; j++)
            acc[r][j] = FCG_ZERO();
    for (p = 0; p < k16; p += 16) {
        FCG_VT xv[FCR_NV];
        FCG_UNROLL for (j = 0; j < FCR_NV; j++)
            xv[j] = FCG_LOAD(xi + p + j * FCG_VL);
        FCG_UNROLL for (r = 0; r < R; r++)
            FCG_UNROLL for (j = 0; j < FCR_NV; j++)
                acc[r][j] = FCG_FMA(xv[j], FCG_LOAD(w + r * k + p + j * FCG_VL), acc[r][j]);
    }
    FCG_UNROLL for (r = 0; r < R; r++)
        FCG_UNROLL for (j = 0; j < FCR_NV; j++)
            FCG_STORE(s[r] + j * FCG_VL, acc[r][j]);
#else
    for (r = 0; r < R; r++)
        for (j = 0; j < 16; j++)
            s[r][j] = 0.0f;
    for (p = 0; p < k16; p += 16)
        for (r = 0; r < R; r++)
            for (j = 0; j < 16; j++)
                s[r][j] = FCR_FMA1(xi[p + j], w[r * k + p + j], s[r][j]);
#endif
    for (r = 0; r < R; r++) {
        for (p = k16; p < k; p++)
            s[r][p - k16] = FCR_FMA1(xi[p], w[r * k + p], s[r][p - k16]);
        for (int h = 8; h >= 1; h /= 2)
            for (j = 0; j < h; j++)
                s[r][j] = s[r][j] + s[r][j + h];
        y[r] = s[r][0] + bias[r];
    }
}

/* y[i, o] for i < n and o in [o0, o1): y (n, m), x (n, k), w (m, k), bias (m,). */
static void FCR_NAME(fcr_forward)(fcg_i n, fcg_i k, fcg_i m, const float* x, const float* w,
                                  const float* bias, float* y, fcg_i o0, fcg_i o1)
{
    for (fcg_i i = 0; i < n; i++) {
        fcg_i o = o0;
        for (; o + 4 <= o1; o += 4)
            FCR_NAME(fcr_dots)(4, x + i * k, w + o * k, k, bias + o, y + i * m + o);
        for (; o < o1; o++)
            FCR_NAME(fcr_dots)(1, x + i * k, w + o * k, k, bias + o, y + i * m + o);
    }
}

#if FCG_VL
/* R rows of c (from c's row i0), one vector of columns at q: each b vector loaded once. */
static inline __attribute__((always_inline)) void
FCR_NAME(fcr_chain_tile)(const int R, fcg_i T, const float* a, fcg_i ars, fcg_i ats, const float* b,
                         fcg_i ldb, float* c, fcg_i ldc, fcg_i q)
{
    FCG_VT acc[4];
    int r;
    FCG_UNROLL for (r = 0; r < R; r++)
        acc[r] = FCG_ZERO();
    for (fcg_i t = 0; t < T; t++) {
        FCG_VT bv = FCG_LOAD(b + t * ldb + q);
        FCG_UNROLL for (r = 0; r < R; r++)
            acc[r] = FCG_FMA(FCG_SET1(a[r * ars + t * ats]), bv, acc[r]);
    }
    FCG_UNROLL for (r = 0; r < R; r++)
        FCG_STORE(c + r * ldc + q, acc[r]);
}
#endif

/* c[i*ldc + q] = sum over t < T in order of a[i*ars + t*ats] * b[t*ldb + q], for i < rows and q
 * in [q0, q1) (rows of c: gw's outputs with t the batch, or gx's batch rows with t the outputs). */
static void FCR_NAME(fcr_chains)(fcg_i rows, fcg_i T, const float* a, fcg_i ars, fcg_i ats,
                                 const float* b, fcg_i ldb, float* c, fcg_i ldc, fcg_i q0, fcg_i q1)
{
    fcg_i i, q;
#if FCG_VL
    const fcg_i qv = q0 + (q1 - q0) / FCG_VL * FCG_VL;
    for (q = q0; q < qv; q += FCG_VL) {
        for (i = 0; i + 4 <= rows; i += 4)
            FCR_NAME(fcr_chain_tile)(4, T, a + i * ars, ars, ats, b, ldb, c + i * ldc, ldc, q);
        for (; i < rows; i++)
            FCR_NAME(fcr_chain_tile)(1, T, a + i * ars, ars, ats, b, ldb, c + i * ldc, ldc, q);
    }
    for (i = 0; i < rows; i++)
        for (q = qv; q < q1; q++) {
            float acc = 0.0f;
            for (fcg_i t = 0; t < T; t++)
                acc = FCR_FMA1(a[i * ars + t * ats], b[t * ldb + q], acc);
            c[i * ldc + q] = acc;
        }
#else
    for (i = 0; i < rows; i++) {  /* (the same sums, step by step across q: a vector loop) */
        for (q = q0; q < q1; q++)
            c[i * ldc + q] = 0.0f;
        for (fcg_i t = 0; t < T; t++)
            for (q = q0; q < q1; q++)
                c[i * ldc + q] = FCR_FMA1(a[i * ars + t * ats], b[t * ldb + q], c[i * ldc + q]);
    }
#endif
}

#undef FCR_FMA1
#undef FCR_NV
#undef FCR_NAME
#undef FCR_CAT
#undef FCR_CAT2
