/* Register-tiled SGEMM of the dense layers, compiled once per SIMD path by gemm.h, which
 * defines FCG_SUFFIX, FCG_VL (lanes), FCG_R (rows of a tile), FCG_V (vectors per row), FCG_KC
 * and the vector macros (design: docs/PERFORMANCE.md, section 3).
 *
 *     c[i*ldc + j] (+)= sum_p a[i*ars + p*aps] * b[p*ldb + j]
 *
 * A tile of R rows x V vectors of c stays in registers over a block of up to FCG_KC steps p:
 * per step, V vector loads of b and one broadcast of a per row.  Every element of c is one
 * chain of FMAs in the order of p (the tile is loaded from c between blocks), so the blocking
 * and the ISA's vector width do not change a bit of the result. */
#define FCG_CAT2(a, b) a##_##b
#define FCG_CAT(a, b) FCG_CAT2(a, b)
#define FCG_NAME(n) FCG_CAT(n, FCG_SUFFIX)
#ifndef FCG_UNROLL
#define FCG_UNROLL _Pragma("GCC unroll 32")
#endif

/* One tile: rows i < R (a at a + i*ars, or a + i if arow), vectors v < V of b/c; masked: the
 * last vectors' lanes limited by m (c's lanes past them untouched); load_c 1: add to c, 2:
 * store c past the caches (streaming stores, c aligned to the vector). */
static inline __attribute__((always_inline)) void
FCG_NAME(fcg_tile)(const int R, const int arow, const int masked, const float* a, fcg_i ars,
                   fcg_i aps, const float* b, fcg_i ldb, fcg_i k, float* c, fcg_i ldc,
                   const FCG_MASK_T* m, int load_c)
{
    FCG_VT acc[7][FCG_V];  /* (R <= 7; rows past FCG_R only in unused instantiations) */
    fcg_i p;
    FCG_UNROLL for (int r = 0; r < R; r++)
        FCG_UNROLL for (int v = 0; v < FCG_V; v++)
            acc[r][v] = load_c != 1 ? FCG_ZERO() : masked ? FCG_LOAD_M(c + r * ldc + v * FCG_VL, m[v])
                                                      : FCG_LOAD(c + r * ldc + v * FCG_VL);
    for (p = 0; p < k; p++) {
        const float* bp = b + p * ldb;
        const float* ap = a + p * aps;
        FCG_VT x[FCG_V];
        FCG_UNROLL for (int v = 0; v < FCG_V; v++)
            x[v] = masked ? FCG_LOAD_M(bp + v * FCG_VL, m[v]) : FCG_LOAD(bp + v * FCG_VL);
        FCG_UNROLL for (int r = 0; r < R; r++) {
            FCG_VT s = FCG_SET1(arow ? ap[r] : ap[r * ars]);
            FCG_UNROLL for (int v = 0; v < FCG_V; v++)
                acc[r][v] = FCG_FMA(x[v], s, acc[r][v]);
        }
    }
    FCG_UNROLL for (int r = 0; r < R; r++)
        FCG_UNROLL for (int v = 0; v < FCG_V; v++) {
            if (masked)
                FCG_STORE_M(c + r * ldc + v * FCG_VL, m[v], acc[r][v]);
            else if (load_c == 2)
                FCG_STREAM(c + r * ldc + v * FCG_VL, acc[r][v]);
            else
                FCG_STORE(c + r * ldc + v * FCG_VL, acc[r][v]);
        }
}

/* The tile for each row count, row layout and masking: fcg_tiles[arow][masked][R - 1]. */
typedef void (*FCG_NAME(fcg_tile_fn))(const float*, fcg_i, fcg_i, const float*, fcg_i, fcg_i,
                                      float*, fcg_i, const FCG_MASK_T*, int);
#define FCG_TILE_FN(R_, AROW_, MASKED_) \
    static void FCG_NAME(fcg_tile_##R_##_##AROW_##_##MASKED_)( \
        const float* a, fcg_i ars, fcg_i aps, const float* b, fcg_i ldb, fcg_i k, float* c, \
        fcg_i ldc, const FCG_MASK_T* m, int load_c) \
    { FCG_NAME(fcg_tile)(R_, AROW_, MASKED_, a, ars, aps, b, ldb, k, c, ldc, m, load_c); }
#define FCG_TILE_FNS(AROW_, MASKED_) \
    FCG_TILE_FN(1, AROW_, MASKED_) FCG_TILE_FN(2, AROW_, MASKED_) FCG_TILE_FN(3, AROW_, MASKED_) \
    FCG_TILE_FN(4, AROW_, MASKED_) FCG_TILE_FN(5, AROW_, MASKED_) FCG_TILE_FN(6, AROW_, MASKED_) \
    FCG_TILE_FN(7, AROW_, MASKED_)
FCG_TILE_FNS(0, 0)
FCG_TILE_FNS(0, 1)
FCG_TILE_FNS(1, 0)
FCG_TILE_FNS(1, 1)
#define FCG_TILE_ROW(AROW_, MASKED_) { \
    FCG_NAME(fcg_tile_1_##AROW_##_##MASKED_), FCG_NAME(fcg_tile_2_##AROW_##_##MASKED_), \
    FCG_NAME(fcg_tile_3_##AROW_##_##MASKED_), FCG_NAME(fcg_tile_4_##AROW_##_##MASKED_), \
    FCG_NAME(fcg_tile_5_##AROW_##_##MASKED_), FCG_NAME(fcg_tile_6_##AROW_##_##MASKED_), \
    FCG_NAME(fcg_tile_7_##AROW_##_##MASKED_)}
static const FCG_NAME(fcg_tile_fn) FCG_NAME(fcg_tiles)[2][2][7] = {
    {FCG_TILE_ROW(0, 0), FCG_TILE_ROW(0, 1)}, {FCG_TILE_ROW(1, 0), FCG_TILE_ROW(1, 1)}};
#undef FCG_TILE_ROW
#undef FCG_TILE_FNS
#undef FCG_TILE_FN

/* d[j*ldd + i] = s[i*lds + j] + (add ? add[i] : 0) for i < rows, j < cols: VL x VL blocks in
 * registers with FCG_TRANSPOSE (AVX-512, AVX2), the edges (and other paths) one value at a time. */
static void FCG_NAME(fcg_transpose)(const float* s, fcg_i lds, fcg_i rows, fcg_i cols,
                                    const float* add, float* d, fcg_i ldd)
{
    fcg_i i0 = 0, j0, i, j;
#ifdef FCG_TRANSPOSE
    FCG_VT r[FCG_VL];
    for (; i0 + FCG_VL <= rows; i0 += FCG_VL) {
        for (j0 = 0; j0 + FCG_VL <= cols; j0 += FCG_VL) {
            for (i = 0; i < FCG_VL; i++) {
                r[i] = FCG_LOAD(s + (i0 + i) * lds + j0);
                if (add)
                    r[i] = FCG_ADD(r[i], FCG_SET1(add[i0 + i]));
            }
            FCG_TRANSPOSE(r);
            for (j = 0; j < FCG_VL; j++)
                FCG_STORE(d + (j0 + j) * ldd + i0, r[j]);
        }
        for (j = j0; j < cols; j++)
            for (i = i0; i < i0 + FCG_VL; i++)
                d[j * ldd + i] = s[i * lds + j] + (add ? add[i] : 0.0f);
    }
#endif
    for (j0 = 0; j0 < cols; j0 += 64)  /* (blocks of 64 columns: the rows' lines stay cached) */
        for (i = i0; i < rows; i++)
            for (j = j0; j < cols && j < j0 + 64; j++)
                d[j * ldd + i] = s[i * lds + j] + (add ? add[i] : 0.0f);
}

/* b's slice of steps [p0, p0 + kc) and columns [j0, j0 + nj) -> bp[kc][W]. */
static void FCG_NAME(fcg_pack_b)(const float* b, fcg_i ldb, fcg_i kc, fcg_i nj, float* bp)
{
    const fcg_i W = FCG_V * FCG_VL;
    fcg_i p, j;
    if (nj == W) {
        for (p = 0; p < kc; p++)
            FCG_UNROLL for (int v = 0; v < FCG_V; v++)
                FCG_STORE(bp + p * W + v * FCG_VL, FCG_LOAD(b + p * ldb + v * FCG_VL));
        return;
    }
    for (p = 0; p < kc; p++)  /* (lanes past nj: the tiles load them masked) */
        for (j = 0; j < nj; j++)
            bp[p * W + j] = b[p * ldb + j];
}

/* c (m x n, row stride ldc) = A B with A[i][p] = a[i*ars + p*aps] (ars == 1 or aps == 1)
 * and B[p][j] = b[(j / W)*bts + p*ldb + j % W], W = FCG_V*FCG_VL: b's column tiles of W side
 * by side in rows (bts = W; each block of a tile is then copied to a buffer of kc x W first,
 * its rows being far apart) or packed one after another (bts = k*ldb, ldb = W).  Steps (k >= 1)
 * in blocks of FCG_KC; per block, the column tiles, each over all row tiles (the block of b in
 * L1, a from L2; the next tile's rows of a prefetched to L2).  nt: c is written once and not
 * read soon (the weight gradient): if one block covers k and c's rows are 64-byte aligned,
 * its whole vectors are streaming stores (no read of c's lines into the caches first). */
static void FCG_NAME(fcg_gemm)(fcg_i m, fcg_i n, fcg_i k, const float* a, fcg_i ars, fcg_i aps,
                               const float* b, fcg_i ldb, fcg_i bts, float* c, fcg_i ldc, int nt)
{
    const fcg_i W = FCG_V * FCG_VL;
    const int arow = ars == 1, pack = bts == W && ldb != W;
    fcg_i p0, j0, i0, kc, nj, v, R;
    FCG_MASK_T full[FCG_V], tail[FCG_V];
    float bp[FCG_KC * FCG_V * FCG_VL] __attribute__((aligned(64)));
    const int stream = nt && k <= FCG_KC && (uintptr_t)c % 64 == 0 && ldc % 16 == 0;
    for (v = 0; v < FCG_V; v++) {
        fcg_i left = n % W - v * FCG_VL;
        full[v] = FCG_MASK_N(FCG_VL);
        tail[v] = FCG_MASK_N(left <= 0 ? 0 : left < FCG_VL ? left : FCG_VL);
    }
    for (p0 = 0; p0 < k; p0 += FCG_KC) {
        kc = k - p0 < FCG_KC ? k - p0 : FCG_KC;
        for (j0 = 0; j0 < n; j0 += W) {
            const float* bt = b + (j0 / W) * bts + p0 * ldb;
            fcg_i lb = ldb;
            nj = n - j0 < W ? n - j0 : W;
            if (pack) {
                FCG_NAME(fcg_pack_b)(bt, ldb, kc, nj, bp);
                bt = bp;
                lb = W;
            }
            for (i0 = 0; i0 < m; i0 += FCG_R) {
                R = m - i0 < FCG_R ? m - i0 : FCG_R;
                if (!arow && i0 + FCG_R < m) {  /* the next tile's rows of a -> L2 */
                    const float* an = a + (i0 + FCG_R) * ars + p0 * aps;
                    fcg_i r, e;
                    for (r = 0; r < FCG_R && i0 + FCG_R + r < m; r++)
                        for (e = 0; e < kc; e += 16)
                            _mm_prefetch((const char*)(an + r * ars + e), _MM_HINT_T1);
                }
                FCG_NAME(fcg_tiles)[arow][nj < W][R - 1](
                    a + i0 * ars + p0 * aps, ars, aps, bt, lb, kc, c + i0 * ldc + j0, ldc,
                    nj < W ? tail : full, p0 > 0 ? 1 : stream ? 2 : 0);
            }
        }
    }
    if (stream)
        _mm_sfence();  /* (the streaming stores ordered before whatever reads c next) */
}

#undef FCG_NAME
#undef FCG_CAT
#undef FCG_CAT2
