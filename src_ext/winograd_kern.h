/* Winograd F(2x2, 3x3), F(2x2, 5x5) and F(4x4, 3x3) convolutions of a group of images
 * (design: docs/PERFORMANCE.md, "Winograd convolutions"), compiled once per ISA by
 * conv_direct_kern.h with its macros.
 *
 * For an R x R kernel (R = 3 or 5) and output tiles of M x M (M = 2, or 4 for R = 3) output tile
 * (ty, tx) is the block of outputs at rows M ty .. M ty + M - 1 and columns M tx .. M tx + M - 1;
 * it reads the A x A input window (A = M + R - 1) at padded row M ty and column M tx.  The input
 * is packed as for an A x A convolution of stride M (fcd_geo with KH = KW = A, sh = sw = M and
 * OH x OW = TH x TW tiles), so window value (i, j) of VL consecutive tiles of a tile row is one
 * unaligned load from phase (i % M, j % M) at (i / M)*Wq + j / M.  Per group of NI images:
 *   1. u[xi][c][q] = (B^T d B)[xi] for every channel c and tile q = k*T + ty*TW + tx of image k
 *      (compact: no padding columns), NX = A*A transformed values xi per window;
 *   2. per block of J output channels and each xi: m[xi][j][q] = sum_c vp[xi][j][c] u[xi][c][q],
 *      the direct kernel's register tile with one tap (fcd_fwd_tile);
 *   3. per channel: the output tile A^T m A, bias and ReLU, into y (N, OC, OH, OW): the M*M
 *      phases of the tiles interleaved into the output rows.
 * Every output is summed in one fixed order (per xi over c, then the fixed transforms). */

/* The 16 values of VL windows, d[4 i + j] = window value (i, j), phase (i % 2, j % 2) at
 * p0 .. p3 (phases (0, 0), (0, 1), (1, 0), (1, 1)), row i / 2 (row length W1 = W2 - 1), column
 * j / 2: LD(d[k], m, address) loads them (m: FCW_MERGE's lane mask). */
#define FCW_WINDOW(d, LD, m, p0, p1, p2, p3, W1, W2) do { \
    LD(d[0], m, p0); LD(d[1], m, p1); LD(d[2], m, p0 + 1); LD(d[3], m, p1 + 1); \
    LD(d[4], m, p2); LD(d[5], m, p3); LD(d[6], m, p2 + 1); LD(d[7], m, p3 + 1); \
    LD(d[8], m, p0 + W1); LD(d[9], m, p1 + W1); LD(d[10], m, p0 + W2); LD(d[11], m, p1 + W2); \
    LD(d[12], m, p2 + W1); LD(d[13], m, p3 + W1); LD(d[14], m, p2 + W2); LD(d[15], m, p3 + W2); \
} while (0)
#define FCW_LOAD(v, m, p) ((v) = FCD_LOAD(p))
#define FCW_MERGE(v, m, p) ((v) = FCD_LOAD_MASKED((v), (m), (p)))

/* Rows (B^T d) then columns (t B) of the input transform, in place over 16 vectors. */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_in_tf)(FCD_VT* d)
{
    FCD_VT t[16];
    int i, j;
    FCD_UNROLL
    for (j = 0; j < 4; j++) {
        t[j] = FCD_SUB(d[j], d[8 + j]);
        t[4 + j] = FCD_ADD(d[4 + j], d[8 + j]);
        t[8 + j] = FCD_SUB(d[8 + j], d[4 + j]);
        t[12 + j] = FCD_SUB(d[4 + j], d[12 + j]);
    }
    FCD_UNROLL
    for (i = 0; i < 4; i++) {
        d[4 * i] = FCD_SUB(t[4 * i], t[4 * i + 2]);
        d[4 * i + 1] = FCD_ADD(t[4 * i + 1], t[4 * i + 2]);
        d[4 * i + 2] = FCD_SUB(t[4 * i + 2], t[4 * i + 1]);
        d[4 * i + 3] = FCD_SUB(t[4 * i + 1], t[4 * i + 3]);
    }
}

/* The input transform of d, stored to planes d0, d0 + US, ... */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_in_put)(FCD_VT* d, float* d0, fcd_i US)
{
    int i;
    FCD_NAME(fcw_in_tf)(d);
    FCD_UNROLL
    for (i = 0; i < 16; i++)
        FCD_STORE(d0 + i * US, d[i]);
}

/* F(2x2, 5x5): B^T of 6 vectors v[0], v[s], ... -> r[0], r[rs], ... (B^T's rows (4 0 -5 0 1 0),
 * (0 -4 -4 1 1 0), (0 4 -4 -1 1 0), (0 -2 -1 2 1 0), (0 2 -1 -2 1 0), (0 4 0 -5 0 1); products by
 * 2 and 4 as exact sums). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_bt6)(const FCD_VT* v, int s, FCD_VT* r, int rs)
{
    FCD_VT a = FCD_SUB(v[4 * s], v[2 * s]), t;
    t = FCD_SUB(v[0], v[2 * s]);
    t = FCD_ADD(t, t);
    r[0] = FCD_ADD(FCD_ADD(t, t), a);
    t = FCD_ADD(v[s], v[2 * s]);
    t = FCD_ADD(t, t);
    r[rs] = FCD_SUB(FCD_ADD(v[3 * s], v[4 * s]), FCD_ADD(t, t));
    t = FCD_SUB(v[s], v[2 * s]);
    t = FCD_ADD(t, t);
    r[2 * rs] = FCD_ADD(FCD_SUB(v[4 * s], v[3 * s]), FCD_ADD(t, t));
    t = FCD_SUB(v[3 * s], v[s]);
    t = FCD_ADD(t, t);
    r[3 * rs] = FCD_ADD(a, t);
    r[4 * rs] = FCD_SUB(a, t);
    t = FCD_SUB(v[s], v[3 * s]);
    t = FCD_ADD(t, t);
    r[5 * rs] = FCD_ADD(FCD_ADD(t, t), FCD_SUB(v[5 * s], v[3 * s]));
}

/* F(2x2, 5x5): A^T of 6 vectors v[0], v[s], ... (rows (1 1 1 1 1 0), (0 1 -1 2 -2 1)). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_at6)(const FCD_VT* v, int s, FCD_VT* y0, FCD_VT* y1)
{
    FCD_VT t = FCD_SUB(v[3 * s], v[4 * s]);
    *y0 = FCD_ADD(FCD_ADD(FCD_ADD(v[s], v[2 * s]), FCD_ADD(v[3 * s], v[4 * s])), v[0]);
    *y1 = FCD_ADD(FCD_ADD(FCD_SUB(v[s], v[2 * s]), FCD_ADD(t, t)), v[5 * s]);
}

/* F(2x2, 5x5): output transform A^T m A of 36 vectors -> y[a*2 + b] (4 vectors). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_out_tf6)(const FCD_VT* m, FCD_VT* y)
{
    FCD_VT r[12];
    int j;
    FCD_UNROLL
    for (j = 0; j < 6; j++)
        FCD_NAME(fcw_at6)(m + j, 6, r + j, r + 6 + j);
    FCD_NAME(fcw_at6)(r, 1, y, y + 1);
    FCD_NAME(fcw_at6)(r + 6, 1, y + 2, y + 3);
}

/* F(4x4, 3x3): A^T of 6 vectors v[0], v[s], ... -> y[0], y[ys], y[2 ys], y[3 ys] (rows
 * (1 1 1 1 1 0), (0 1 -1 2 -2 0), (0 1 1 4 4 0), (0 1 -1 8 -8 1); products by 2, 4 and 8 as exact
 * sums). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_at4)(const FCD_VT* v, int s, FCD_VT* y, int ys)
{
    FCD_VT a = FCD_ADD(v[s], v[2 * s]), b = FCD_SUB(v[s], v[2 * s]);
    FCD_VT c = FCD_ADD(v[3 * s], v[4 * s]), d = FCD_SUB(v[3 * s], v[4 * s]);
    FCD_VT c2 = FCD_ADD(c, c), d2 = FCD_ADD(d, d), d4 = FCD_ADD(d2, d2);
    y[0] = FCD_ADD(FCD_ADD(a, c), v[0]);
    y[ys] = FCD_ADD(b, d2);
    y[2 * ys] = FCD_ADD(a, FCD_ADD(c2, c2));
    y[3 * ys] = FCD_ADD(FCD_ADD(b, FCD_ADD(d4, d4)), v[5 * s]);
}

/* F(4x4, 3x3): output transform A^T m A of the 36 vectors at m, m + ms, ... -> y[a*4 + b] (16
 * vectors); each column's six loaded as it is transformed (36 vectors do not fit the registers). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_out_tf43)(const float* m, fcd_i ms, FCD_VT* y)
{
    FCD_VT r[24], col[6];
    int a, i;
    FCD_UNROLL
    for (a = 0; a < 6; a++) {  /* columns: r[6 i + a] = (A^T m)[i][a] */
        FCD_UNROLL
        for (i = 0; i < 6; i++)
            col[i] = FCD_LOAD(m + (6 * i + a) * ms);
        FCD_NAME(fcw_at4)(col, 1, r + a, 6);
    }
    FCD_UNROLL
    for (a = 0; a < 4; a++)  /* then rows */
        FCD_NAME(fcw_at4)(r + 6 * a, 1, y + 4 * a, 1);
}

/* Output transform A^T m A of 16 vectors -> y[a*2 + b] (4 vectors). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_out_tf)(const FCD_VT* m, FCD_VT* y)
{
    FCD_VT r[8];
    int a, j;
    FCD_UNROLL
    for (j = 0; j < 4; j++) {
        r[j] = FCD_ADD(FCD_ADD(m[j], m[4 + j]), m[8 + j]);
        r[4 + j] = FCD_SUB(FCD_SUB(m[4 + j], m[8 + j]), m[12 + j]);
    }
    FCD_UNROLL
    for (a = 0; a < 2; a++) {
        y[2 * a] = FCD_ADD(FCD_ADD(r[4 * a], r[4 * a + 1]), r[4 * a + 2]);
        y[2 * a + 1] = FCD_SUB(FCD_SUB(r[4 * a + 1], r[4 * a + 2]), r[4 * a + 3]);
    }
}

/* The runs of a chunk [q0, q0 + nq) of a group's tiles (T per image, TW per tile row): tiles of
 * one tile row; run r: position rq in the chunk, length rn, packed source offset rsrc (xs floats
 * per image), image rk, tile row rty, first tile rtx.  Returns the number of runs. */
static inline fcd_i FCD_NAME(fcw_runs)(const fcd_geo* g, fcd_i q0, fcd_i nq, fcd_i T, fcd_i xs, fcd_i* rq,
                                       fcd_i* rn, fcd_i* rsrc, fcd_i* rk, fcd_i* rty, fcd_i* rtx)
{
    fcd_i TW = g->OW, nr, e, n, k, ty, tx;
    for (nr = 0, e = q0; e < q0 + nq; e += n, nr++) {
        k = e / T;
        ty = e % T / TW;
        tx = e % TW;
        n = TW - tx < q0 + nq - e ? TW - tx : q0 + nq - e;
        rq[nr] = e - q0;
        rn[nr] = n;
        rsrc[nr] = k * xs + ty * g->Wq + tx;
        rk[nr] = k;
        rty[nr] = ty;
        rtx[nr] = tx;
    }
    return nr;
}

/* Step 1 of fcw_images for a chunk of runs (rq, rn, rsrc: position in the chunk, length and
 * packed source offset of each of the nr runs; nv vectors of tiles): u[xi][c][q] = (B^T d B)[xi]
 * vector by vector: a vector's lanes are tiles of one or more runs (short tile rows share a
 * vector), each run's lanes loaded under a mask; lanes past the chunk's tiles are zeros. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcw_in_chunk)(const fcd_geo* g, const float* xq, const fcd_i* rq, const fcd_i* rn,
                       const fcd_i* rsrc, fcd_i nr, fcd_i nv, float* u, fcd_i US, fcd_i Q, const int R,
                       const int M)
{
    fcd_i C = g->C, CP = C * g->plane, v, r, e, c, i, j;
    const fcd_i W1 = g->Wq, W2 = g->Wq + 1;
    for (v = 0, r = 0; v < nv; v++) {
        fcd_i v0 = v * FCD_VL, ns = 0, sb[FCD_VL];
        FCD_MASK_T sm[FCD_VL];
        int full = 0;
        while (rq[r] + rn[r] <= v0)
            r++;
        for (e = r; e < nr && rq[e] < v0 + FCD_VL; e++, ns++) {
            fcd_i lo = rq[e] > v0 ? rq[e] - v0 : 0;
            fcd_i hi = rq[e] + rn[e] < v0 + FCD_VL ? rq[e] + rn[e] - v0 : FCD_VL;
            sb[ns] = rsrc[e] - rq[e] + v0;  /* lane l of the run reads offset sb + l */
            sm[ns] = FCD_LANES(lo, hi);
            full = lo == 0 && hi == FCD_VL;
        }
        full = full && ns == 1;
        /* window value (i, j) is in phase (i % M, j % M) at (i / M)*Wq + j / M */
        if (R + M == 7)  /* (6 x 6 windows: column by column, six vectors at a time) */
            for (c = 0; c < C; c++) {
                FCD_VT t[36], col[6], rr[6];
                FCD_UNROLL
                for (j = 0; j < 6; j++) {
                    if (full) {
                        const float* p0 = xq + c * g->plane + sb[0];
                        FCD_UNROLL
                        for (i = 0; i < 6; i++)
                            col[i] = FCD_LOAD(p0 + ((i % M) * M + j % M) * CP + (i / M) * W1 + j / M);
                    } else {
                        FCD_UNROLL
                        for (i = 0; i < 6; i++)
                            col[i] = FCD_ZERO();
                        for (e = 0; e < ns; e++) {
                            const float* p0 = xq + c * g->plane + sb[e];
                            FCD_UNROLL
                            for (i = 0; i < 6; i++)
                                col[i] = FCD_LOAD_MASKED(col[i], sm[e],
                                                         p0 + ((i % M) * M + j % M) * CP + (i / M) * W1 + j / M);
                        }
                    }
                    FCD_NAME(fcw_bt6)(col, 1, t + j, 6);  /* (B^T d)[.][j] */
                }
                FCD_UNROLL
                for (i = 0; i < 6; i++) {  /* then the rows of the result */
                    FCD_NAME(fcw_bt6)(t + 6 * i, 1, rr, 1);
                    FCD_UNROLL
                    for (j = 0; j < 6; j++)
                        FCD_STORE(u + c * Q + v0 + (6 * i + j) * US, rr[j]);
                }
            }
        else if (full)
            for (c = 0; c < C; c++) {
                const float* p0 = xq + c * g->plane + sb[0];
                const float* p1 = p0 + CP;
                const float* p2 = p1 + CP;
                const float* p3 = p2 + CP;
                FCD_VT d[16];
                FCW_WINDOW(d, FCW_LOAD, 0, p0, p1, p2, p3, W1, W2);
                FCD_NAME(fcw_in_put)(d, u + c * Q + v0, US);
            }
        else
            for (c = 0; c < C; c++) {
                FCD_VT d[16];
                FCD_UNROLL
                for (i = 0; i < 16; i++)
                    d[i] = FCD_ZERO();
                for (e = 0; e < ns; e++) {
                    const float* p0 = xq + c * g->plane + sb[e];
                    const float* p1 = p0 + CP;
                    const float* p2 = p1 + CP;
                    const float* p3 = p2 + CP;
                    FCW_WINDOW(d, FCW_MERGE, sm[e], p0, p1, p2, p3, W1, W2);
                }
                FCD_NAME(fcw_in_put)(d, u + c * Q + v0, US);
            }
    }
}

/* d[4 l + k] = q[k][l] for the VL lanes l of the four vectors q (F(4x4, 3x3): a row of VL tiles'
 * outputs in column order). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_quads)(const FCD_VT* q, float* d)
{
#ifdef FCD_QUADS
    FCD_QUADS(q, d);
#else
    float t[4][FCD_VL];
    int k, l;
    for (k = 0; k < 4; k++)
        FCD_STORE(t[k], q[k]);
    for (l = 0; l < FCD_VL; l++)
        for (k = 0; k < 4; k++)
            d[4 * l + k] = t[k][l];
#endif
}

/* d[0 .. n) = s[0 .. n) by vectors (the last one's load may read up to VL - 1 floats past s + n). */
static inline void FCD_NAME(fcw_copy)(const float* __restrict__ s, fcd_i n, float* __restrict__ d)
{
    fcd_i k = 0;
    for (; k + FCD_VL <= n; k += FCD_VL)
        FCD_STORE(d + k, FCD_LOAD(s + k));
    if (k < n) {
        FCD_VT t = FCD_LOAD(s + k);
        FCD_STORE_N(d + k, t, n - k);
    }
}

/* A group of NI images: src (NI, C, Hs, Ws) -> y (NI, OC, OH, OW) (OH, OW: the convolution's
 * output; g: the A x A stride-M packing with g->OH x g->OW tiles), in chunks of Q <= FCW_QMAX
 * tile positions (a multiple of VL).  vp: transformed weights [xi][ob][c][J]; st: the vector
 * starts v*VL of a chunk.  Scratch: xq (NI packings of xs floats; zeroed: they hold earlier
 * packings of this geometry), u (NX fcw_u_stride(C, Q), finite), m (NX fcw_m_stride(J, Q)),
 * z (M*M Q + VL).  R (3 or 5) and M (2, or 4 with R = 3): constants once inlined.  M = 4: the
 * outputs with bias and ReLU, interleaved by rows (z[4 a Q + 4 q + b]: row a, column b of tile q),
 * then copied run by run. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcw_images_r)(const fcd_geo* g, const float* src, fcd_i NI,
                       const float* vp, const fcd_i* st, const float* bias, int relu,
                       fcd_i OH, fcd_i OW, float* y, float* xq, fcd_i xs, int zeroed,
                       float* u, float* m, float* z, fcd_i Q, const int R, const int M)
{
    fcd_i TH = g->OH, TW = g->OW, T = TH * TW, C = g->C, OC = g->OC, NOB = g->OCP / FCD_J;
    fcd_i US = fcw_u_stride(C, Q), MS = fcw_m_stride(FCD_J, Q), OHW = OH * OW;
    fcd_i k, ob, xi, i, n, v, nv, jj, q0, nq, a, e, r, nr;
    const int NX = (M + R - 1) * (M + R - 1);
    int whole;
    fcd_i rq[FCW_QMAX], rn[FCW_QMAX], rsrc[FCW_QMAX], rdst[FCW_QMAX], rpairs[FCW_QMAX], rrows[FCW_QMAX];
    fcd_i rcols[FCW_QMAX];
    fcd_i rk[FCW_QMAX], rty[FCW_QMAX], rtx[FCW_QMAX];
    const fcd_i tab0[1] = {0};
    for (k = 0; k < NI; k++)
        FCD_NAME(fcd_pack_input)(g, src + k * C * g->Hs * g->Ws, xq + k * xs, zeroed);
    for (q0 = 0; q0 < NI * T; q0 += Q) {
        nq = NI * T - q0 < Q ? NI * T - q0 : Q;
        nv = (nq + FCD_VL - 1) / FCD_VL;
        /* the chunk's runs: tiles of one tile row (image k, row ty, from column tx) */
        nr = FCD_NAME(fcw_runs)(g, q0, nq, T, xs, rq, rn, rsrc, rk, rty, rtx);
        for (r = 0; r < nr; r++) {
            rdst[r] = rk[r] * OC * OHW + M * rty[r] * OW + M * rtx[r];
            rpairs[r] = 2 * (rtx[r] + rn[r]) <= OW ? rn[r] : rn[r] - 1;  /* (M = 2: an odd last column has no pair) */
            rrows[r] = OH - M * rty[r] < M ? OH - M * rty[r] : M;
            rcols[r] = OW - M * rtx[r] < M * rn[r] ? OW - M * rtx[r] : M * rn[r];  /* (the last tile cut) */
        }
        /* whole: every run is one whole vector (rows of VL tiles, an even output width) */
        whole = 0;
#ifdef FCD_PUT_PAIRS
        whole = M == 2 && TW == FCD_VL && OW == 2 * TW;
#endif
        /* 1. input transform of the chunk's windows */
        FCD_NAME(fcw_in_chunk)(g, xq, rq, rn, rsrc, nr, nv, u, US, Q, R, M);
        for (ob = 0; ob < NOB; ob++) {
            fcd_i nj = OC - ob * FCD_J < FCD_J ? OC - ob * FCD_J : FCD_J;
            /* 2. products, xi by xi */
            for (xi = 0; xi < NX; xi++) {
                const float* wpb = vp + (xi * NOB + ob) * C * FCD_J;
                for (v = 0; v < nv; v += n) {
                    n = nv - v < FCD_VMAX ? nv - v : FCD_VMAX;
                    if (n == FCD_VMAX)
                        FCD_NAME(fcd_fwd_tile)(u + xi * US, tab0, wpb, C, 1, Q, m + xi * MS, Q, st + v, st + v, FCD_VMAX);
                    else if (n == 2)  /* FCD_VMAX <= 3 */
                        FCD_NAME(fcd_fwd_tile)(u + xi * US, tab0, wpb, C, 1, Q, m + xi * MS, Q, st + v, st + v, 2);
                    else
                        FCD_NAME(fcd_fwd_tile)(u + xi * US, tab0, wpb, C, 1, Q, m + xi * MS, Q, st + v, st + v, 1);
                }
            }
            /* 3. output transform, bias, ReLU, channel by channel */
            for (jj = 0; jj < nj; jj++) {
                fcd_i o = ob * FCD_J + jj;
                float b = bias ? bias[o] : 0.0f;
                if (M == 4 && OW >= FCW_PREFETCH_ROW)  /* (the lines this channel's rows will be copied to) */
                    for (r = 0; r < nr; r++)
                        for (a = 0; a < rrows[r]; a++) {
                            const float* d = y + rdst[r] + o * OHW + a * OW;
                            for (e = 0; e < rcols[r]; e += 16)
                                __builtin_prefetch(d + e, 0, 3);
                            __builtin_prefetch(d + rcols[r] - 1, 0, 3);
                        }
                for (v = 0; v < nv; v++) {
                    FCD_VT mm[36], yy[4];
                    if (M == 4) {
                        FCD_VT bv = FCD_SET1(b), y4[16];
                        FCD_NAME(fcw_out_tf43)(m + jj * Q + v * FCD_VL, MS, y4);
                        FCD_UNROLL
                        for (i = 0; i < 16; i++) {
                            y4[i] = FCD_ADD(y4[i], bv);
                            if (relu)  /* (the ReLU kernels' rule: NaN stays, -0 -> +0) */
                                y4[i] = FCD_RELU(y4[i]);
                        }
                        FCD_UNROLL
                        for (a = 0; a < 4; a++)
                            FCD_NAME(fcw_quads)(y4 + 4 * a, z + 4 * a * Q + 4 * v * FCD_VL);
                        continue;
                    }
                    FCD_UNROLL
                    for (xi = 0; xi < NX; xi++)
                        mm[xi] = FCD_LOAD(m + xi * MS + jj * Q + v * FCD_VL);
                    if (R == 5)
                        FCD_NAME(fcw_out_tf6)(mm, yy);
                    else
                        FCD_NAME(fcw_out_tf)(mm, yy);
#ifdef FCD_PUT_PAIRS
                    if (whole) {  /* vector v is run v, a whole tile row: straight to its two rows */
                        FCD_PUT_PAIRS(y + rdst[v] + o * OHW, yy[0], yy[1], b, relu);
                        if (rrows[v] == 2)
                            FCD_PUT_PAIRS(y + rdst[v] + o * OHW + OW, yy[2], yy[3], b, relu);
                        continue;
                    }
#endif
                    FCD_UNROLL
                    for (i = 0; i < 4; i++)
                        FCD_STORE(z + i * Q + v * FCD_VL, yy[i]);
                }
                if (M == 4) {  /* each run's rows, its last tile cut to the output's width */
                    for (r = 0; r < nr; r++)
                        for (a = 0; a < rrows[r]; a++)
                            FCD_NAME(fcw_copy)(z + 4 * a * Q + 4 * rq[r], rcols[r], y + rdst[r] + o * OHW + a * OW);
                    continue;
                }
                for (r = 0; r < nr && !whole; r++)  /* the four phases interleaved into the output rows */
                    for (a = 0; a < rrows[r]; a++) {
                        float* __restrict__ d = y + rdst[r] + o * OHW + a * OW;
                        const float* __restrict__ s0 = z + 2 * a * Q + rq[r];
                        const float* __restrict__ s1 = s0 + Q;
                        fcd_i n2 = rpairs[r];
                        e = 0;
#ifdef FCD_INTERLEAVE
                        e = FCD_INTERLEAVE(s0, s1, n2, b, relu, d);
#endif
                        for (; e < n2; e++) {
                            float e0 = s0[e] + b, e1 = s1[e] + b;
                            if (relu) {  /* (the ReLU kernels' rule: NaN stays, -0 -> +0) */
                                e0 = e0 <= 0.0f ? 0.0f : e0;
                                e1 = e1 <= 0.0f ? 0.0f : e1;
                            }
                            d[2 * e] = e0;
                            d[2 * e + 1] = e1;
                        }
                        if (n2 < rn[r]) {  /* an odd last column */
                            float e0 = s0[n2] + b;
                            d[2 * n2] = relu && e0 <= 0.0f ? 0.0f : e0;
                        }
                    }
            }
        }
    }
}

/* The 1-D transform A of a 2-tap output gradient (y0, y1) -> r[0], r[rs], ... (A = the
 * transpose of A^T: 3x3 (1 0), (1 1), (1 -1), (0 -1); 5x5 (1 0), (1 1), (1 -1), (1 2), (1 -2), (0 1)). */
static inline __attribute__((always_inline)) void FCD_NAME(fcw_a1)(FCD_VT y0, FCD_VT y1, FCD_VT* r, int rs,
                                                                   const int R)
{
    r[0] = y0;
    r[rs] = FCD_ADD(y0, y1);
    r[2 * rs] = FCD_SUB(y0, y1);
    if (R == 5) {
        FCD_VT t = FCD_ADD(y1, y1);
        r[3 * rs] = FCD_ADD(y0, t);
        r[4 * rs] = FCD_SUB(y0, t);
        r[5 * rs] = y1;
    } else {
        r[3 * rs] = FCD_SUB(FCD_ZERO(), y1);
    }
}

/* Weight gradient of a group of NI images: z[xi][c][o] += sum over the group's tiles q of
 * mt[xi][q][o] * u[xi][c][q], with u the forward's input transform and mt[xi][q] = (A dY A^T)[xi]
 * of tile q's 2x2 output gradient dY (zeros past OH x OW), by the direct weight gradient's
 * register tiles (the input channels as its taps, the tiles as its pixels).  g: the input
 * packing (as fcw_images); gt: the group's output gradients transposed (pixel-major, OCV
 * channels, gs floats per image); z: [xi][NQB*T][OCV], T channels per tile of V channel
 * vectors (off: the channels' offsets c*Q, padded with 0); add: accumulate into z, else the
 * group's first chunk overwrites it.  Scratch: xq (as fcw_images), u (NX fcw_u_stride(C, Q)),
 * mt (NX (Q*OCV + 16)). */
static inline __attribute__((always_inline)) void
FCD_NAME(fcw_wgrad_r)(const fcd_geo* g, const float* src, fcd_i NI, const float* gt, fcd_i gs,
                      fcd_i OCV, fcd_i OH, fcd_i OW, float* xq, fcd_i xs, int zeroed, float* u, float* mt,
                      fcd_i Q, const fcd_i* off, fcd_i T, int V, float* z, int add, const int R)
{
    fcd_i TH = g->OH, TW = g->OW, TT = TH * TW, C = g->C;
    fcd_i US = fcw_u_stride(C, Q), MS = Q * OCV + 16, NQB = (C + T - 1) / T, NOB = OCV / (V * FCD_VL);
    fcd_i k, xi, i, nv, q0, nq, r, nr, t, ov, ob, qb;
    const int A = R + 1, NX = (R + 1) * (R + 1);
    fcd_i rq[FCW_QMAX], rn[FCW_QMAX], rsrc[FCW_QMAX], rk[FCW_QMAX], rty[FCW_QMAX], rtx[FCW_QMAX];
    for (k = 0; k < NI; k++)
        FCD_NAME(fcd_pack_input)(g, src + k * C * g->Hs * g->Ws, xq + k * xs, zeroed);
    for (q0 = 0; q0 < NI * TT; q0 += Q) {
        nq = NI * TT - q0 < Q ? NI * TT - q0 : Q;
        nv = (nq + FCD_VL - 1) / FCD_VL;
        nr = FCD_NAME(fcw_runs)(g, q0, nq, TT, xs, rq, rn, rsrc, rk, rty, rtx);
        /* 1. the input transform */
        FCD_NAME(fcw_in_chunk)(g, xq, rq, rn, rsrc, nr, nv, u, US, Q, R, 2);
        /* 2. the output gradient's transform, tile by tile, channel vector by vector */
        for (r = 0; r < nr; r++)
            for (t = 0; t < rn[r]; t++) {
                fcd_i x0 = 2 * (rtx[r] + t), y0 = 2 * rty[r], q = rq[r] + t;
                const float* b = gt + rk[r] * gs + (y0 * OW + x0) * OCV;
                int c1 = x0 + 1 < OW, r1 = y0 + 1 < OH;
                for (ov = 0; ov < OCV; ov += FCD_VL) {
                    FCD_VT d00 = FCD_LOAD(b + ov), d01 = FCD_ZERO(), d10 = FCD_ZERO(), d11 = FCD_ZERO();
                    FCD_VT tt[12], mm[36];
                    if (c1)
                        d01 = FCD_LOAD(b + OCV + ov);
                    if (r1)
                        d10 = FCD_LOAD(b + OW * OCV + ov);
                    if (r1 && c1)
                        d11 = FCD_LOAD(b + (OW + 1) * OCV + ov);
                    FCD_NAME(fcw_a1)(d00, d10, tt, 2, R);      /* columns: tt[2 i + b] */
                    FCD_NAME(fcw_a1)(d01, d11, tt + 1, 2, R);
                    FCD_UNROLL
                    for (i = 0; i < A; i++)                     /* then rows: mm[A i + j] */
                        FCD_NAME(fcw_a1)(tt[2 * i], tt[2 * i + 1], mm + A * i, 1, R);
                    FCD_UNROLL
                    for (xi = 0; xi < NX; xi++)
                        FCD_STORE(mt + xi * MS + q * OCV + ov, mm[xi]);
                }
            }
        /* 3. the products, xi by xi: the channels as taps, the chunk's tiles as pixels */
        for (xi = 0; xi < NX; xi++)
            for (ob = 0; ob < NOB; ob++)
                for (qb = 0; qb < NQB; qb++)
                    FCD_NAME(fcd_bwd_weight_tile)(u + xi * US, 0, mt + xi * MS, 0, 1, OCV, 1, nq, 0, ob, V,
                                                  off + qb * T, z + (xi * NQB + qb) * T * OCV, add || q0 > 0, 0, T);
    }
}

/* fcw_wgrad_r for 3x3 (R = 3) or 5x5 (R = 5) kernels. */
static void FCD_NAME(fcw_wgrad)(const fcd_geo* g, const float* src, fcd_i NI, const float* gt, fcd_i gs,
                                fcd_i OCV, fcd_i OH, fcd_i OW, float* xq, fcd_i xs, int zeroed, float* u,
                                float* mt, fcd_i Q, const fcd_i* off, fcd_i T, int V, float* z, int add, int R)
{
    if (R == 5)
        FCD_NAME(fcw_wgrad_r)(g, src, NI, gt, gs, OCV, OH, OW, xq, xs, zeroed, u, mt, Q, off, T, V, z, add, 5);
    else
        FCD_NAME(fcw_wgrad_r)(g, src, NI, gt, gs, OCV, OH, OW, xq, xs, zeroed, u, mt, Q, off, T, V, z, add, 3);
}

/* fcw_pack_weights for the 6 x 6 transforms of K x K kernels (F(2x2, 5x5): K = 5, G = fcw_g5;
 * F(4x4, 3x3): K = 3, G = fcw_g43) of output-channel block ob: V = G g G^T (xi = 6*row + column)
 * in double, each sum in order of its terms (the Numba backend's order), rounded once; the
 * block's J channels are the lanes of each sum (the same operations as one kernel at a time),
 * CB input channels' planes gathered before they are copied out (one plane's values are
 * NOB*C*J floats apart: 16 KB at 64 channels). */
static inline __attribute__((always_inline)) void
FCD_NAME(fcw_weights6_k)(fcd_i OC, fcd_i C, fcd_i OCP, const float* w, int flip, fcd_i ob, float* vp,
                         const int K, const double* gm)
{
    enum { J = FCD_J, CB = 16 };
    fcd_i NOB = OCP / J, KK = K * K, c, c0, nc, jj, o, i, j, k, xi;
    double gg[5][5][J], t[6][5][J], v[J];
    float blk[36][CB][J];  /* CB channels' 36 planes of the block, copied out plane by plane */
    for (c0 = 0; c0 < C; c0 += CB) {
        nc = C - c0 < CB ? C - c0 : CB;
        for (c = c0; c < c0 + nc; c++) {
            for (i = 0; i < K; i++)
                for (j = 0; j < K; j++)
                    for (jj = 0; jj < J; jj++) {
                        o = ob * J + jj;
                        gg[i][j][jj] = o >= OC ? 0.0 : flip ? w[(c * OC + o) * KK + KK - 1 - (i * K + j)]
                                                            : w[(o * C + c) * KK + i * K + j];
                    }
            for (i = 0; i < 6; i++)
                for (j = 0; j < K; j++) {
                    for (jj = 0; jj < J; jj++)
                        v[jj] = gm[i * K] * gg[0][j][jj];
                    for (k = 1; k < K; k++)
                        for (jj = 0; jj < J; jj++)
                            v[jj] = v[jj] + gm[i * K + k] * gg[k][j][jj];
                    for (jj = 0; jj < J; jj++)
                        t[i][j][jj] = v[jj];
                }
            for (i = 0; i < 6; i++)
                for (j = 0; j < 6; j++) {
                    for (jj = 0; jj < J; jj++)
                        v[jj] = t[i][0][jj] * gm[j * K];
                    for (k = 1; k < K; k++)
                        for (jj = 0; jj < J; jj++)
                            v[jj] = v[jj] + t[i][k][jj] * gm[j * K + k];
                    for (jj = 0; jj < J; jj++)
                        blk[6 * i + j][c - c0][jj] = (float)v[jj];
                }
        }
        for (xi = 0; xi < 36; xi++)
            memcpy(vp + ((xi * NOB + ob) * C + c0) * J, blk[xi], (size_t)(nc * J) * sizeof(float));
    }
}

static void FCD_NAME(fcw_weights6)(fcd_i OC, fcd_i C, fcd_i OCP, const float* w, int flip, fcd_i ob, int K,
                                   float* vp)
{
    if (K == 5)
        FCD_NAME(fcw_weights6_k)(OC, C, OCP, w, flip, ob, vp, 5, &fcw_g5[0][0]);
    else
        FCD_NAME(fcw_weights6_k)(OC, C, OCP, w, flip, ob, vp, 3, &fcw_g43[0][0]);
}

/* fcw_images_r for each (R, M): one function each (inlined into one, the three shared registers badly). */
#define FCW_IMAGES_RM(name, R_, M_) \
    static __attribute__((noinline)) void FCD_NAME(name)(const fcd_geo* g, const float* src, fcd_i NI, \
        const float* vp, const fcd_i* st, const float* bias, int relu, fcd_i OH, fcd_i OW, float* y, float* xq, \
        fcd_i xs, int zeroed, float* u, float* m, float* z, fcd_i Q) \
    { FCD_NAME(fcw_images_r)(g, src, NI, vp, st, bias, relu, OH, OW, y, xq, xs, zeroed, u, m, z, Q, R_, M_); }
FCW_IMAGES_RM(fcw_images_32, 3, 2)
FCW_IMAGES_RM(fcw_images_52, 5, 2)
FCW_IMAGES_RM(fcw_images_34, 3, 4)
#undef FCW_IMAGES_RM

/* F(2x2, 3x3) (R = 3, M = 2), F(2x2, 5x5) (R = 5) or F(4x4, 3x3) (M = 4). */
static void FCD_NAME(fcw_images)(const fcd_geo* g, const float* src, fcd_i NI,
                                 const float* vp, const fcd_i* st, const float* bias, int relu,
                                 fcd_i OH, fcd_i OW, float* y, float* xq, fcd_i xs, int zeroed,
                                 float* u, float* m, float* z, fcd_i Q, int R, int M)
{
    if (R == 5)
        FCD_NAME(fcw_images_52)(g, src, NI, vp, st, bias, relu, OH, OW, y, xq, xs, zeroed, u, m, z, Q);
    else if (M == 4)
        FCD_NAME(fcw_images_34)(g, src, NI, vp, st, bias, relu, OH, OW, y, xq, xs, zeroed, u, m, z, Q);
    else
        FCD_NAME(fcw_images_32)(g, src, NI, vp, st, bias, relu, OH, OW, y, xq, xs, zeroed, u, m, z, Q);
}

#undef FCW_WINDOW
#undef FCW_LOAD
#undef FCW_MERGE
