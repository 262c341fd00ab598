/* Micro-kernels of the direct convolution, compiled once per ISA by conv_direct.h, which
 * defines FCD_SUFFIX, FCD_VL (lanes), FCD_J (output channels per block), FCD_VMAX (pixel
 * vectors per forward tile), FCD_WT (taps per weight-gradient tile of 2 channel vectors)
 * and the vector macros.  Accumulator tiles: J*VMAX (forward) and 2*WT (weight gradient)
 * vectors, kept in registers (24 zmm with AVX-512).  Every output is accumulated in one fixed order (FMA by FMA). */
#define FCD_CAT2(a, b) a##_##b
#define FCD_CAT(a, b) FCD_CAT2(a, b)
#define FCD_NAME(n) FCD_CAT(n, FCD_SUFFIX)
#ifndef FCD_UNROLL  /* register tiles: the small constant loops must be fully unrolled */
#define FCD_UNROLL _Pragma("GCC unroll 32")
/* GCC's predictive commoning would carry fcd_bww_rows' broadcasts from one column to the next
 * (tap j + 1 at ow is tap j at ow + 1) in spilled vector registers; the tile wants them
 * reloaded (a broadcast load is one FMA operand). */
#if defined(__GNUC__) && !defined(__clang__)
#define FCD_NO_PCOM __attribute__((optimize("no-predictive-commoning", "fp-contract=off")))
#else
#define FCD_NO_PCOM
#endif
/* A register tile acc[R][V] of vectors: zeroed; updated by acc[r][v] += x[v] * s(r) (one
 * broadcast of the scalar expression s(r_) per row); each vector stored at addr(r_, v_). */
#define FCD_TILE_ZERO(acc, R, V) \
    FCD_UNROLL for (int r_ = 0; r_ < (R); r_++) \
        FCD_UNROLL for (int v_ = 0; v_ < (V); v_++) acc[r_][v_] = FCD_ZERO();
#define FCD_TILE_FMA(acc, R, V, x, s) \
    FCD_UNROLL for (int r_ = 0; r_ < (R); r_++) { \
        FCD_VT b_ = FCD_SET1(s); \
        FCD_UNROLL for (int v_ = 0; v_ < (V); v_++) acc[r_][v_] = FCD_FMA(x[v_], b_, acc[r_][v_]); \
    }
#define FCD_TILE_STORE(acc, R, V, addr) \
    FCD_UNROLL for (int r_ = 0; r_ < (R); r_++) \
        FCD_UNROLL for (int v_ = 0; v_ < (V); v_++) FCD_STORE(addr, acc[r_][v_]);
#endif

/* Bias and ReLU on one vector (the ReLU kernels' rule: NaN stays, -0 -> +0), then its first
 * n lanes stored at d. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_put)(float* d, FCD_VT s, FCD_VT b, int relu, fcd_i n)
{
    s = FCD_ADD(s, b);
    if (relu)
        s = FCD_RELU(s);
    if (n == FCD_VL)
        FCD_STORE(d, s);
    else
        FCD_STORE_N(d, s, n);
}

/* Grid result (OCP, PR) -> y (OC, OH, OW) plus bias, optional ReLU (each row's vectors read at
 * most VL - 1 floats past it, within PR). */
static void FCD_NAME(fcd_unpack_output)(const fcd_geo* g, const float* yg, const float* bias,
                                        int relu, float* y)
{
    fcd_i o, oh, ow;
    for (o = 0; o < g->OC; o++) {
        FCD_VT b = FCD_SET1(bias ? bias[o] : 0.0f);
        for (oh = 0; oh < g->OH; oh++) {
            const float* s = yg + o * g->PR + oh * g->Wq;
            float* d = y + (o * g->OH + oh) * g->OW;
            for (ow = 0; ow < g->OW; ow += FCD_VL)
                FCD_NAME(fcd_put)(d + ow, FCD_LOAD(s + ow), b, relu,
                                  g->OW - ow < FCD_VL ? g->OW - ow : FCD_VL);
        }
    }
}

/* The accumulators of V pixel vectors (grid positions st[v] ... st[v] + VL - 1) x J output
 * channels of block wpb, over all C*KK taps.  Every lane computes the output of its own grid
 * position, so vectors may overlap. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_fwd_acc)(const float* xq, const fcd_i* tab, const float* wpb, fcd_i C, fcd_i KK,
                      fcd_i plane, const fcd_i* st, const int V, FCD_VT acc[FCD_J][FCD_VMAX])
{
    fcd_i c, kk;
    int v;
    FCD_TILE_ZERO(acc, FCD_J, V)
    for (c = 0; c < C; c++) {
        const float* xc = xq + c * plane;
        const float* wc = wpb + c * KK * FCD_J;
        for (kk = 0; kk < KK; kk++) {
            const float* xk = xc + tab[kk];
            const float* wk = wc + kk * FCD_J;
            FCD_VT xv[FCD_VMAX];
            FCD_UNROLL
            for (v = 0; v < V; v++)
                xv[v] = FCD_LOAD(xk + st[v]);
            FCD_TILE_FMA(acc, FCD_J, V, xv, wk[r_])
        }
    }
}

/* fcd_fwd_acc's tile, vector v stored to yb + jj*PR + so[v]. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_fwd_tile)(const float* xq, const fcd_i* tab, const float* wpb, fcd_i C, fcd_i KK,
                       fcd_i plane, float* yb, fcd_i PR, const fcd_i* st, const fcd_i* so,
                       const int V)
{
    FCD_VT acc[FCD_J][FCD_VMAX];
    FCD_NAME(fcd_fwd_acc)(xq, tab, wpb, C, KK, plane, st, V, acc);
    FCD_TILE_STORE(acc, FCD_J, V, yb + r_ * PR + so[v_])
}

/* fcd_fwd_acc's tile of row-aligned vectors straight to y (OC, OH, OW) from the registers:
 * vector v of channel jj < nj at y + jj*HW + yo[v], its nv[v] valid lanes, with bias and
 * ReLU (fcd_put). */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_fwd_tile_put)(const float* xq, const fcd_i* tab, const float* wpb, fcd_i C, fcd_i KK,
                           fcd_i plane, const fcd_i* st, const fcd_i* yo, const fcd_i* nv,
                           fcd_i nj, const float* bias, int relu, float* y, fcd_i HW, const int V)
{
    FCD_VT acc[FCD_J][FCD_VMAX];
    FCD_NAME(fcd_fwd_acc)(xq, tab, wpb, C, KK, plane, st, V, acc);
    FCD_UNROLL
    for (int jj = 0; jj < FCD_J; jj++)
        if (jj < nj) {
            FCD_VT b = FCD_SET1(bias ? bias[jj] : 0.0f);
            FCD_UNROLL
            for (int v = 0; v < V; v++)
                FCD_NAME(fcd_put)(y + jj * HW + yo[v], acc[jj][v], b, relu, nv[v]);
        }
}

/* One image: xq (packed input), NS pixel vectors starting at grid positions st (see
 * fcd_pixel_starts).  With row-aligned vectors (yo != NULL: output offsets oh*OW + ow0 and
 * nv valid lanes per vector) each tile goes from the registers straight to y
 * (OC, OH, OW) with bias and ReLU; otherwise to the grid yg (OCP, PR), for
 * fcd_unpack_output. */
static void FCD_NAME(fcd_fwd_image)(const fcd_geo* g, const float* xq, const fcd_i* tab,
                                    const float* wp, const fcd_i* st, const fcd_i* yo,
                                    const fcd_i* nv, fcd_i NS, const float* bias, int relu,
                                    float* y, float* yg)
{
    fcd_i KK = g->KH * g->KW, ob, i, n;
    for (ob = 0; ob < g->OCP / FCD_J; ob++) {
        const float* wpb = wp + ob * g->C * KK * FCD_J;
        fcd_i nj = g->OC - ob * FCD_J < FCD_J ? g->OC - ob * FCD_J : FCD_J;
        for (i = 0; i < NS; i += n) {
            n = NS - i < FCD_VMAX ? NS - i : FCD_VMAX;
            if (yo) {
                const float* bb = bias ? bias + ob * FCD_J : NULL;
                float* yj = y + ob * FCD_J * g->OH * g->OW;
                fcd_i HW = g->OH * g->OW;
                if (n == FCD_VMAX)
                    FCD_NAME(fcd_fwd_tile_put)(xq, tab, wpb, g->C, KK, g->plane, st + i, yo + i, nv + i, nj, bb,
                                               relu, yj, HW, FCD_VMAX);
                else if (n == 2)  /* FCD_VMAX <= 3 */
                    FCD_NAME(fcd_fwd_tile_put)(xq, tab, wpb, g->C, KK, g->plane, st + i, yo + i, nv + i, nj, bb,
                                               relu, yj, HW, 2);
                else
                    FCD_NAME(fcd_fwd_tile_put)(xq, tab, wpb, g->C, KK, g->plane, st + i, yo + i, nv + i, nj, bb,
                                               relu, yj, HW, 1);
                continue;
            }
            float* yb = yg + ob * FCD_J * g->PR;
            if (n == FCD_VMAX)
                FCD_NAME(fcd_fwd_tile)(xq, tab, wpb, g->C, KK, g->plane, yb, g->PR, st + i, st + i, FCD_VMAX);
            else if (n == 2)  /* FCD_VMAX <= 3 */
                FCD_NAME(fcd_fwd_tile)(xq, tab, wpb, g->C, KK, g->plane, yb, g->PR, st + i, st + i, 2);
            else
                FCD_NAME(fcd_fwd_tile)(xq, tab, wpb, g->C, KK, g->plane, yb, g->PR, st + i, st + i, 1);
        }
    }
}

/* Channel tile (outputs whose rows fill few pixel vectors; docs/PERFORMANCE.md, section 9): R
 * (<= FCD_CR) output pixels of one row, grid positions p .. p + R - 1, x FCD_CV vectors of output
 * channels of block wpb ([c][kk][FCD_JC]), over all C*KK taps in the pixel tiles' order (one
 * product-and-sum per tap and channel, a*b as b*a: the same bytes), the input values broadcast.
 * Stored channels-last: pixel r's FCD_JC channels at cl + r*FCD_JC. */
#define FCD_JC (FCD_CV * FCD_VL)
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_ctile)(const float* xq, const fcd_i* tab, const float* wpb, fcd_i C, fcd_i KK, fcd_i plane,
                    fcd_i p, float* cl, const int R)
{
    FCD_VT acc[FCD_CR][FCD_CV];
    fcd_i c, kk;
    FCD_TILE_ZERO(acc, R, FCD_CV)
    for (c = 0; c < C; c++) {
        const float* xc = xq + c * plane + p;
        const float* wc = wpb + c * KK * FCD_JC;
        for (kk = 0; kk < KK; kk++) {
            const float* xk = xc + tab[kk];
            const float* wk = wc + kk * FCD_JC;
            FCD_VT wv[FCD_CV];
            FCD_UNROLL
            for (int v = 0; v < FCD_CV; v++)
                wv[v] = FCD_LOAD(wk + v * FCD_VL);
            FCD_TILE_FMA(acc, R, FCD_CV, wv, xk[r_])
        }
    }
    FCD_TILE_STORE(acc, R, FCD_CV, cl + r_ * FCD_JC + v_ * FCD_VL)
}

/* Channels-last rows cl (HW, FCD_JC) -> y (nj, HW) plus bias and ReLU (fcd_put's rule; no bias:
 * + 0.0 as fcd_put): VL x VL blocks transposed in registers where FCD_TRANSPOSE exists, the
 * rest one value at a time. */
static void FCD_NAME(fcd_ct_store)(const float* cl, fcd_i HW, fcd_i nj, const float* bias, int relu, float* y)
{
    fcd_i e = 0, o;
#ifdef FCD_TRANSPOSE
    FCD_VT r[FCD_VL];
    for (; e + FCD_VL <= HW; e += FCD_VL)
        for (fcd_i o0 = 0; o0 < nj; o0 += FCD_VL) {
            int i;
            for (i = 0; i < FCD_VL; i++)
                r[i] = FCD_LOAD(cl + (e + i) * FCD_JC + o0);
            FCD_TRANSPOSE(r);
            for (i = 0; i < FCD_VL && o0 + i < nj; i++)
                FCD_NAME(fcd_put)(y + (o0 + i) * HW + e, r[i], FCD_SET1(bias ? bias[o0 + i] : 0.0f), relu, FCD_VL);
        }
#endif
    for (; e < HW; e++)
        for (o = 0; o < nj; o++) {
            float v = cl[e * FCD_JC + o] + (bias ? bias[o] : 0.0f);
            y[o * HW + e] = relu && v <= 0.0f ? 0.0f : v;
        }
}

#define FCD_CT_CASE(n_) case n_: FCD_NAME(fcd_ctile)(xq, tab, wpb, g->C, KK, g->plane, p, d, n_); break;

/* One image on channel tiles: per block of FCD_JC output channels (weights wp packed
 * [ob][c][kk][FCD_JC] by fcd_pack_weights_blocks), each output row cut into ceil(OW / FCD_CR)
 * tiles of nearly equal width, into cl (OH*OW rows of FCD_JC), then fcd_ct_store to y
 * (OC, OH, OW). */
static void FCD_NAME(fcd_fwd_image_ct)(const fcd_geo* g, const float* xq, const fcd_i* tab, const float* wp,
                                       const float* bias, int relu, float* y, float* cl)
{
    fcd_i KK = g->KH * g->KW, HW = g->OH * g->OW, nt = (g->OW + FCD_CR - 1) / FCD_CR, ob, oh, k, ow, n;
    for (ob = 0; ob * FCD_JC < g->OC; ob++) {
        const float* wpb = wp + ob * g->C * KK * FCD_JC;
        for (oh = 0; oh < g->OH; oh++)
            for (k = 0, ow = 0; k < nt; k++, ow += n) {
                fcd_i p = oh * g->Wq + ow;
                float* d = cl + (oh * g->OW + ow) * FCD_JC;
                n = (g->OW - ow + nt - k - 1) / (nt - k);
                switch (n) {
                    FCD_CT_CASE(1) FCD_CT_CASE(2) FCD_CT_CASE(3) FCD_CT_CASE(4)
#if FCD_CR >= 6
                    FCD_CT_CASE(5) FCD_CT_CASE(6)
#endif
#if FCD_CR >= 12
                    FCD_CT_CASE(7) FCD_CT_CASE(8) FCD_CT_CASE(9) FCD_CT_CASE(10) FCD_CT_CASE(11) FCD_CT_CASE(12)
#endif
                    default: break;
                }
            }
        FCD_NAME(fcd_ct_store)(cl, HW, g->OC - ob * FCD_JC < FCD_JC ? g->OC - ob * FCD_JC : FCD_JC,
                               bias ? bias + ob * FCD_JC : NULL, relu, y + ob * FCD_JC * HW);
    }
}
#undef FCD_CT_CASE

/* Weight gradient, vectorised over output channels: gt holds the output gradient of NI
 * images channels-last ([oh*OW + ow][OCV], image i at gt + i*gs; packed inputs at xq + i*xs),
 * so one tile of V channel vectors x T taps (q = c*KK + kk, input at xq + off[q] + oh*Wq + ow)
 * is accumulated over their output positions in registers, with no reduction across lanes.
 * The tile starts from out (add) or from zero, and is stored back to out: the images of a
 * slot are summed in order. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_bww_tile)(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI, fcd_i OCV,
                       fcd_i OH, fcd_i OW, fcd_i Wq, const fcd_i* off, float* out, int add,
                       const int V, const int T)
{
    FCD_VT acc[2 * FCD_WT][2];  /* [tap][channel vector] */
    fcd_i n, oh, ow;
    int v;
    if (add) {
        FCD_UNROLL for (int r_ = 0; r_ < T; r_++)
            FCD_UNROLL for (int v_ = 0; v_ < V; v_++) acc[r_][v_] = FCD_LOAD(out + r_ * OCV + v_ * FCD_VL);
    } else {
        FCD_TILE_ZERO(acc, T, V)
    }
    for (n = 0; n < NI; n++)
        for (oh = 0; oh < OH; oh++) {  /* valid positions only */
            const float* xb = xq + n * xs + oh * Wq;
            const float* gb = gt + n * gs + oh * OW * OCV;
            for (ow = 0; ow < OW; ow++) {
                FCD_VT gv[2];
                FCD_UNROLL
                for (v = 0; v < V; v++)
                    gv[v] = FCD_LOAD(gb + ow * OCV + v * FCD_VL);
                FCD_TILE_FMA(acc, T, V, gv, xb[off[r_] + ow])
            }
        }
    FCD_TILE_STORE(acc, T, V, out + r_ * OCV + v_ * FCD_VL)
}

/* fcd_bww_tile for taps in R whole rows of KW (stride 1 along the rows: tap r*KW + j reads
 * row pointer r at column ow + j): R row pointers instead of R*KW tap offsets, so the tile's
 * addresses stay in registers.  The same FMAs in the same order as fcd_bww_tile. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_bww_rows)(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI, fcd_i OCV,
                       fcd_i OH, fcd_i OW, fcd_i Wq, const fcd_i* off, float* out, int add,
                       const int V, const int R, const int KW)
{
    FCD_VT acc[FCD_TAPS_MAX][2];  /* [tap][channel vector] */
    fcd_i n, oh, ow;
    if (add) {
        FCD_UNROLL for (int r_ = 0; r_ < R * KW; r_++)
            FCD_UNROLL for (int v_ = 0; v_ < V; v_++) acc[r_][v_] = FCD_LOAD(out + r_ * OCV + v_ * FCD_VL);
    } else {
        FCD_TILE_ZERO(acc, R * KW, V)
    }
    for (n = 0; n < NI; n++)
        for (oh = 0; oh < OH; oh++) {
            const float* xr[FCD_TAPS_MAX];
            const float* gb = gt + n * gs + oh * OW * OCV;
            FCD_UNROLL for (int r_ = 0; r_ < R; r_++) xr[r_] = xq + n * xs + oh * Wq + off[r_ * KW];
            for (ow = 0; ow < OW; ow++) {
                FCD_VT gv[2];
                FCD_UNROLL for (int v_ = 0; v_ < V; v_++) gv[v_] = FCD_LOAD(gb + ow * OCV + v_ * FCD_VL);
                FCD_UNROLL for (int r_ = 0; r_ < R; r_++)
                    FCD_UNROLL for (int j_ = 0; j_ < KW; j_++) {
                        FCD_VT b_ = FCD_SET1(xr[r_][ow + j_]);
                        FCD_UNROLL for (int v_ = 0; v_ < V; v_++)
                            acc[r_ * KW + j_][v_] = FCD_FMA(gv[v_], b_, acc[r_ * KW + j_][v_]);
                    }
            }
        }
    FCD_TILE_STORE(acc, R * KW, V, out + r_ * OCV + v_ * FCD_VL)
}

/* fcd_bww_rows for 1 or 2 channel vectors and rows of 3 or 5 taps, each compiled without
 * predictive commoning. */
#define FCD_BWW_ROWS(V_, KW_) \
FCD_NO_PCOM __attribute__((noinline)) static void \
FCD_NAME(fcd_bww_rows##V_##_##KW_)(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI, \
                                    fcd_i OCV, fcd_i OH, fcd_i OW, fcd_i Wq, const fcd_i* off, \
                                    float* out, int add) \
{ \
    FCD_NAME(fcd_bww_rows)(xq, xs, gt, gs, NI, OCV, OH, OW, Wq, off, out, add, V_, \
                           2 * FCD_WT / V_ / KW_, KW_); \
}
FCD_BWW_ROWS(1, 3)
FCD_BWW_ROWS(1, 5)
FCD_BWW_ROWS(2, 3)
FCD_BWW_ROWS(2, 5)
#undef FCD_BWW_ROWS

#if FCD_TAPS_MAX >= 27
/* One channel vector x a whole one-channel kernel (5 rows of 5 taps, or 9 rows of 3: a 3x3
 * kernel of 3 channels): 25 or 27 accumulators, which the 32 AVX-512 registers hold; the
 * 2*WT-tap tiles would need two tiles with 15 or 21 padded taps. */
FCD_NO_PCOM __attribute__((noinline)) static void
FCD_NAME(fcd_bww_whole_5)(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI, fcd_i OCV, fcd_i OH,
                          fcd_i OW, fcd_i Wq, const fcd_i* off, float* out, int add)
{
    FCD_NAME(fcd_bww_rows)(xq, xs, gt, gs, NI, OCV, OH, OW, Wq, off, out, add, 1, 5, 5);
}
FCD_NO_PCOM __attribute__((noinline)) static void
FCD_NAME(fcd_bww_whole_3)(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI, fcd_i OCV, fcd_i OH,
                          fcd_i OW, fcd_i Wq, const fcd_i* off, float* out, int add)
{
    FCD_NAME(fcd_bww_rows)(xq, xs, gt, gs, NI, OCV, OH, OW, Wq, off, out, add, 1, 9, 3);
}
#endif

/* NI images (packed inputs xq + i*xs, channels-last gradients gt + i*gs) into a slot's
 * partial sums: channel vectors ob*V ... (V = 1 or 2 vectors of VL channels), taps
 * off[0 .. T) with T = 2*WT/V; out[t*OCV + channel] (out: the slot's (Q, OCV) sums, offset to
 * the tile's first tap), started from zero unless add. */
static void FCD_NAME(fcd_bwd_weight_tile)(const float* xq, fcd_i xs, const float* gt, fcd_i gs,
                                          fcd_i NI, fcd_i OCV, fcd_i OH, fcd_i OW, fcd_i Wq,
                                          fcd_i ob, int V, const fcd_i* off, float* out, int add,
                                          int kw, fcd_i T)
{
    const float* g = gt + ob * V * FCD_VL;
    float* o = out + ob * V * FCD_VL;
#if FCD_TAPS_MAX >= 27
    if (kw == 5 && V == 1 && T == 25) {
        FCD_NAME(fcd_bww_whole_5)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
        return;
    }
    if (kw == 3 && V == 1 && T == 27) {
        FCD_NAME(fcd_bww_whole_3)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
        return;
    }
#endif
    (void)T;
    if (kw == 3 && V == 1)
        FCD_NAME(fcd_bww_rows1_3)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
    else if (kw == 5 && V == 1)
        FCD_NAME(fcd_bww_rows1_5)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
    else if (kw == 3)
        FCD_NAME(fcd_bww_rows2_3)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
    else if (kw == 5)
        FCD_NAME(fcd_bww_rows2_5)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add);
    else if (V == 2)
        FCD_NAME(fcd_bww_tile)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add, 2, FCD_WT);
    else
        FCD_NAME(fcd_bww_tile)(xq, xs, g, gs, NI, OCV, OH, OW, Wq, off, o, add, 1, 2 * FCD_WT);
}

/* fcd_pack_input for sh = sw = 1, no dilation, pt, pl >= 0, in source order: each channel's
 * rows read one after the other (the general loop below visits the channels within each
 * padded row: a cache miss per row on a batch's first pass). */
static void FCD_NAME(fcd_pack_input_s1)(const fcd_geo* g, const float* src, float* xq)
{
    fcd_i c, r, v, n = g->Ws < g->Wq - g->pl ? g->Ws : g->Wq - g->pl;
    for (c = 0; c < g->C; c++)
        for (r = 0; r < g->Hs && r + g->pt < g->Hq; r++) {
            const float* __restrict__ s = src + (c * g->Hs + r) * g->Ws;
            float* __restrict__ d = xq + c * g->plane + (r + g->pt) * g->Wq + g->pl;
            fcd_row_ahead(s, g->Ws);
            for (v = 0; v < n; v++)
                d[v] = s[v];
        }
}

/* fcd_pack_input for sh = sw = 2, no dilation, pt, pl >= 0, in source order: each source row
 * is read once, its even and odd columns written to their two phases (the general loop below
 * visits the channels within each phase row, a cache miss per row on a batch's first pass). */
static void FCD_NAME(fcd_pack_input_s2)(const fcd_geo* g, const float* src, float* xq)
{
    fcd_i c, r, hh, R, e0 = g->pl / 2, o0 = (g->pl + 1) / 2, ne, no;
    fcd_i be = g->pl % 2, bo = 1 - be;
    ne = (g->Ws + 1) / 2;  /* even source columns 2m -> phase column m + e0 < Wq */
    if (ne > g->Wq - e0) ne = g->Wq - e0;
    no = g->Ws / 2;  /* odd source columns 2m + 1 -> phase column m + o0 < Wq */
    if (no > g->Wq - o0) no = g->Wq - o0;
    for (c = 0; c < g->C; c++)
        for (r = 0; r < g->Hs; r++) {
            R = r + g->pt;
            hh = R / 2;
            if (hh >= g->Hq)
                continue;
            const float* __restrict__ s = src + (c * g->Hs + r) * g->Ws;
            fcd_row_ahead(s, g->Ws);
            float* __restrict__ de = xq + (((R % 2) * 2 + be) * g->C + c) * g->plane + hh * g->Wq + e0;
            float* __restrict__ dd = xq + (((R % 2) * 2 + bo) * g->C + c) * g->plane + hh * g->Wq + o0;
#ifdef FCD_DEINTERLEAVE
            FCD_DEINTERLEAVE(s, g->Ws, de, ne, dd, no);
#else
            for (fcd_i m = 0; m < ne; m++)
                de[m] = s[2 * m];
            for (fcd_i m = 0; m < no; m++)
                dd[m] = s[2 * m + 1];
#endif
        }
}

/* fcd_pack_input for sh = sw = 4 (F(4x4, 3x3)'s windows), no dilation, pt, pl >= 0, in source
 * order: each source row read once, its columns dealt to their four phases (with FCD_DEAL4, in
 * registers: padding columns get the zeros they already hold). */
static void FCD_NAME(fcd_pack_input_s4)(const fcd_geo* g, const float* src, float* xq)
{
    fcd_i c, r, R, hh, v, q;
    const fcd_i ps = g->C * g->plane, o = g->pl % 4;  /* (from one column phase to the next) */
    fcd_i nm = (g->Ws + o + 3) / 4;  /* phase columns from pl / 4 on that hold source values */
    if (nm > g->Wq - g->pl / 4) nm = g->Wq - g->pl / 4;
    for (c = 0; c < g->C; c++)
        for (r = 0; r < g->Hs; r++) {
            R = r + g->pt;
            hh = R / 4;
            if (hh >= g->Hq)
                continue;
            const float* __restrict__ s = src + (c * g->Hs + r) * g->Ws;
            float* __restrict__ d = xq + ((R % 4) * 4 * g->C + c) * g->plane + hh * g->Wq;
            fcd_row_ahead(s, g->Ws);
#ifdef FCD_DEAL4
            (void)v, (void)q;
            if (nm > 0)
                FCD_DEAL4(s, g->Ws, o, d + g->pl / 4, ps, nm);
#else
            for (v = 0; v < g->Ws; v++) {  /* source column v: padded column q, phase q % 4 */
                q = v + g->pl;
                if (q / 4 < g->Wq)
                    d[(q % 4) * ps + q / 4] = s[v];
            }
#endif
        }
}

/* src (C, Hs, Ws) -> xq (fcd_geo.xq_size floats).  Unless ``zeroed`` (xq holds an earlier
 * packing of the same geometry, whose zeros are where this one's are) the buffer is zeroed
 * first; then only the source's cells are copied.  Each phase row's source row and column
 * range are worked out once for all channels; the copies are loops compiled for this SIMD
 * path. */
static void FCD_NAME(fcd_pack_input)(const fcd_geo* g, const float* src, float* xq, int zeroed)
{
    fcd_i a, b, c, hh, ww, u, v, lo, hi, HW = g->Hs * g->Ws;
    if (!zeroed)
        memset(xq, 0, (size_t)g->xq_size * sizeof(float));
    if (g->sh == 1 && g->sw == 1 && g->dh == 1 && g->dw == 1 && g->pt >= 0 && g->pl >= 0) {
        FCD_NAME(fcd_pack_input_s1)(g, src, xq);
        return;
    }
    if (g->sh == 2 && g->sw == 2 && g->dh == 1 && g->dw == 1 && g->pt >= 0 && g->pl >= 0) {
        FCD_NAME(fcd_pack_input_s2)(g, src, xq);
        return;
    }
    if (g->sh == 4 && g->sw == 4 && g->dh == 1 && g->dw == 1 && g->pt >= 0 && g->pl >= 0) {
        FCD_NAME(fcd_pack_input_s4)(g, src, xq);
        return;
    }
    for (a = 0; a < g->sh; a++) {
        for (b = 0; b < g->sw; b++) {
            float* ph = xq + (a * g->sw + b) * g->C * g->plane;
            const fcd_i c0 = b - g->pl;  /* phase column ww reads source column ww*sw + c0 (dw == 1) */
            lo = -c0 <= 0 ? 0 : (-c0 + g->sw - 1) / g->sw;
            hi = g->Ws - c0 <= 0 ? 0 : (g->Ws - c0 + g->sw - 1) / g->sw;
            if (hi > g->Wq) hi = g->Wq;
            if (lo > hi) lo = hi;
            for (hh = 0; hh < g->Hq; hh++) {
                u = fcd_src(hh * g->sh + a, g->pt, g->dh, g->Hs);
                if (u < 0)
                    continue;
                for (c = 0; c < g->C; c++) {
                    float* __restrict__ d = ph + c * g->plane + hh * g->Wq;
                    const float* __restrict__ sr = src + c * HW + u * g->Ws;
                    if (g->dw != 1) {  /* scatter: source column v at padded v*dw + pl */
                        for (v = 0; v < g->Ws; v++) {
                            fcd_i q = v * g->dw + g->pl - b;
                            if (q >= 0 && q % g->sw == 0 && q / g->sw < g->Wq)
                                d[q / g->sw] = sr[v];
                        }
                    } else if (g->sw == 1) {  /* one contiguous run */
                        for (ww = lo; ww < hi; ww++)
                            d[ww] = sr[ww + c0];
                    } else if (g->sw == 2) {  /* a stride-2 gather */
#ifdef FCD_EVENS
                        if (hi > lo)
                            FCD_EVENS(d + lo, sr + 2 * lo + c0, hi - lo);
#else
                        for (ww = lo; ww < hi; ww++)
                            d[ww] = sr[2 * ww + c0];
#endif
                    } else {
                        for (ww = lo; ww < hi; ww++)
                            d[ww] = sr[ww * g->sw + c0];
                    }
                }
            }
        }
    }
}

/* (OC, HW) planes -> channels-last rows d[e][OCV], channels >= OC set to ``pad`` (32-bit lanes
 * moved, never computed on: int planes pass through as well).  With FCD_TRANSPOSE (AVX-512,
 * AVX2) and whole blocks of VL channels: VL x VL blocks transposed in registers; otherwise (and
 * for the last positions) one value at a time. */
static void FCD_NAME(fcd_transpose)(const float* s, fcd_i OC, fcd_i HW, fcd_i OCV, float pad, float* d)
{
    fcd_i o, e = 0;
#ifdef FCD_TRANSPOSE
    if (OC % FCD_VL == 0 && OCV == OC) {
        FCD_VT r[FCD_VL];
        int i;
        for (; e + FCD_VL <= HW; e += FCD_VL)
            for (o = 0; o < OC; o += FCD_VL) {
                for (i = 0; i < FCD_VL; i++)
                    r[i] = FCD_LOAD(s + (o + i) * HW + e);
                FCD_TRANSPOSE(r);
                for (i = 0; i < FCD_VL; i++)
                    FCD_STORE(d + (e + i) * OCV + o, r[i]);
            }
    }
#endif
    for (; e < HW; e++) {  /* contiguous writes, one cache line per channel plane read at a time */
        float* de = d + e * OCV;
        for (o = 0; o < OC; o++)
            de[o] = s[o * HW + e];
        for (o = OC; o < OCV; o++)
            de[o] = pad;
    }
}

/* Output gradient (OC, OH, OW) -> channels-last gt[oh*OW + ow][OCV], zero channels >= OC. */
static void FCD_NAME(fcd_pack_grad_t)(const fcd_geo* g, const float* gy, fcd_i OCV, float* gt)
{
    FCD_NAME(fcd_transpose)(gy, g->OC, g->OH * g->OW, OCV, 0.0f, gt);
}

/* The transposed (OH*OW, OCV) output gradient of one image as fcd_pack_grad_t packs it, rebuilt
 * from the gradient of its 2x2 max-pooled output: ``gp``, ``idx`` and the ReLU mask ``y`` (or
 * NULL) are (OC, PH*PW) planes (PH = OH/2, PW = OW/2); each value (times relu_backward's 1 or 0)
 * is added at its index into a zeroed plane, as _maxpool_bwd_plane does.  Indices inside their
 * own 2x2 window (all that the forward writes): the pooled rows transposed into ``sc`` (3 planes
 * of PH*PW*OCV floats), then each window's four rows of gt written whole by vector selects.
 * Returns nonzero, gt unfinished, if an index lies outside its own window (or the plane):
 * the caller then scatters the image (_unpool_image) and packs it. */
static int FCD_NAME(fcd_unpool_grad_t)(const float* gp, const int* idx, const float* y, fcd_i OC,
                                       fcd_i OH, fcd_i OW, fcd_i OCV, float* gt, float* sc)
{
    fcd_i PH = OH / 2, PW = OW / 2, PHW = PH * PW, o, k, a, b, e;
    float* vt = sc;
    int* it = (int*)(sc + PHW * OCV);
    float* mt = sc + 2 * PHW * OCV;
    int stray = 0;
    FCD_NAME(fcd_transpose)(gp, OC, PHW, OCV, 0.0f, vt);
    FCD_NAME(fcd_transpose)((const float*)idx, OC, PHW, OCV, 0.0f, (float*)it);
    for (k = 0; k < PHW; k++)  /* (the padding channels' index: -1, in no window) */
        for (o = OC; o < OCV; o++)
            it[k * OCV + o] = -1;
    if (y) {
        FCD_NAME(fcd_transpose)(y, OC, PHW, OCV, 0.0f, mt);
        for (e = 0; e < PHW * OCV; e += FCD_VL)  /* (OCV: whole vectors) */
            FCD_STORE(vt + e, FCD_MUL(FCD_LOAD(vt + e), FCD_ONE_IF_POS(FCD_LOAD(mt + e))));
    }
    for (a = 0; a < OH; a++) {
        if (a >= 2 * PH) {  /* (rows past the last window: zero) */
            memset(gt + a * OW * OCV, 0, (size_t)(OW * OCV) * sizeof(float));
            continue;
        }
        for (b = 0; b < OW; b++) {
            float* d = gt + (a * OW + b) * OCV;
            fcd_i p = a * OW + b;
            if (b >= 2 * PW) {
                for (o = 0; o < OCV; o += FCD_VL)
                    FCD_STORE(d + o, FCD_ZERO());
                continue;
            }
            k = (a / 2) * PW + b / 2;
            {
                const float* v = vt + k * OCV;
                const int* ix = it + k * OCV;
                for (o = 0; o < OCV; o += FCD_VL)  /* (0 + v: the scatter-add's sum, -0.0 -> +0.0) */
                    FCD_STORE(d + o, FCD_SEL_EQ(ix + o, (int)p, FCD_ADD(FCD_ZERO(), FCD_LOAD(v + o))));
                if ((a & 1) == 0 && (b & 1) == 0) {  /* (once per window: its indices all inside it) */
                    int miss = 0;
                    for (o = 0; o < OC; o++)
                        miss |= (ix[o] != (int)p) & (ix[o] != (int)(p + 1)) & (ix[o] != (int)(p + OW))
                                & (ix[o] != (int)(p + OW + 1));
                    stray |= miss;
                }
            }
        }
    }
    return stray;
}

/* acc[o] = the float64 sum of column o0 + o < o0 + W of the (P, OCV) rows ``gt``, row by row.
 * W a constant at each call: the W sums stay in registers (with a variable width GCC kept them
 * on the stack, a store and a reload per row). */
static inline __attribute__((always_inline)) void FCD_NAME(fcd_column_block)(const float* gt, fcd_i P,
                                                                           fcd_i OCV, fcd_i o0, int W,
                                                                           double* acc)
{
    fcd_i o, e;
    for (o = 0; o < W; o++)
        acc[o] = 0.0;
    for (e = 0; e < P; e++)
        for (o = 0; o < W; o++)  /* (a vector loop: each lane sums one column in order) */
            acc[o] += (double)gt[e * OCV + o0 + o];
}

/* out[o] = the float64 sum of column o < n of the (P, OCV) rows ``gt``, row by row (each
 * channel's output gradient in pixel order; the bias gradient of one image): blocks of 32
 * columns, the rest of OCV (whole vectors, at least 4 floats, zeros past n) by 16, 8, 4. */
static void FCD_NAME(fcd_grad_t_sums)(const float* gt, fcd_i P, fcd_i OCV, fcd_i n, double* out)
{
    double acc[32];
    fcd_i o0 = 0, o;
    int W;
    while (o0 < n) {
        W = o0 + 32 <= OCV ? 32 : o0 + 16 <= OCV ? 16 : o0 + 8 <= OCV ? 8 : 4;
        if (W == 32)
            FCD_NAME(fcd_column_block)(gt, P, OCV, o0, 32, acc);
        else if (W == 16)
            FCD_NAME(fcd_column_block)(gt, P, OCV, o0, 16, acc);
        else if (W == 8)
            FCD_NAME(fcd_column_block)(gt, P, OCV, o0, 8, acc);
        else
            FCD_NAME(fcd_column_block)(gt, P, OCV, o0, 4, acc);
        for (o = 0; o < W && o0 + o < n; o++)
            out[o0 + o] = acc[o];
        o0 += W;
    }
}

/* Peak probe: iters x A independent FMA chains of one vector each, A = the forward tile's
 * accumulators (J x VMAX: 24 of AVX-512's 32 registers, 12 of AVX2's 16), stored to *chains;
 * returns a lane sum so that nothing is optimised away.  Flops = iters * A * VL * 2. */
#define FCD_CHAINS (FCD_J * FCD_VMAX)
static float FCD_NAME(fcd_fma_probe)(long iters, float m, fcd_i* chains)
{
    FCD_VT acc[FCD_CHAINS], mv = FCD_SET1(m), av = FCD_SET1(1e-7f);
    float out[FCD_VL], s = 0.0f;
    long it;
    int k, l;
    FCD_UNROLL
    for (k = 0; k < FCD_CHAINS; k++)
        acc[k] = FCD_SET1((float)k);
    for (it = 0; it < iters; it++)
        FCD_UNROLL
        for (k = 0; k < FCD_CHAINS; k++)
            acc[k] = FCD_FMA(acc[k], mv, av);
    FCD_UNROLL
    for (k = 1; k < FCD_CHAINS; k++)
        acc[0] = acc[0] + acc[k];
    FCD_STORE(out, acc[0]);
    FCD_UNROLL
    for (l = 0; l < FCD_VL; l++)
        s += out[l];
    *chains = FCD_CHAINS;
    return s;
}
#undef FCD_CHAINS

#include "winograd_kern.h"

/* A strided convolution's input gradient computed per input phase (a, b) (rows a, a + sh, ...,
 * columns b, b + sw, ...): pb + poff[a*sw + b] holds phase (a, b) as (C, Ha, Wb); this writes
 * them interleaved into gx (C, H, W), row by row.  (The phases come from the forward kernel's
 * store, which adds a zero bias: no -0.0 among them, so FCD_INTERLEAVE's + 0 is exact.) */
static void FCD_NAME(fcd_interleave_phases)(const float* pb, const fcd_i* poff, fcd_i C, fcd_i H, fcd_i W,
                                            fcd_i sh, fcd_i sw, float* gx)
{
    fcd_i c, h, a, u, b, v, Ha, Wb, n1;
    for (c = 0; c < C; c++)
        for (h = 0; h < H; h++) {
            float* d = gx + (c * H + h) * W;
            a = h % sh;
            u = h / sh;
            Ha = (H - a + sh - 1) / sh;
            if (sw == 2 && W >= 2) {  /* two phases per row: a plain interleave */
                const float* s0 = pb + poff[a * 2] + (c * Ha + u) * ((W + 1) / 2);
                const float* s1 = pb + poff[a * 2 + 1] + (c * Ha + u) * (W / 2);
                n1 = W / 2;
                v = 0;
#ifdef FCD_INTERLEAVE
                v = FCD_INTERLEAVE(s0, s1, n1, 0.0f, 0, d);
#endif
                for (; v < n1; v++) {
                    d[2 * v] = s0[v];
                    d[2 * v + 1] = s1[v];
                }
                if (W % 2)
                    d[W - 1] = s0[n1];
                continue;
            }
            for (b = 0; b < sw && b < W; b++) {
                const float* s = pb + poff[a * sw + b];
                Wb = (W - b + sw - 1) / sw;
                s += (c * Ha + u) * Wb;
                for (v = 0; v < Wb; v++)
                    d[b + sw * v] = s[v];
            }
        }
}

/* Weight gradient from the winners of a 2x2 max pooling (docs/PERFORMANCE.md, section 9,
 * "Pooled weight gradient"): xc is one image's block of VL channels, channels-last and zero
 * padded (row pitch RS floats), so a patch row of KW taps is KW vectors; the m winners of one
 * output channel are wo[e] (their patch's offset) and wv[e] (their gradient), in pixel order.
 * A tile of R patch rows x NV vectors (vector v of row r at + r*RS + v*VL) starts from out
 * (add) or zero and is stored back to out + r*os + v*VL: per slot the images in order, each
 * sum the direct tile's FMAs without its zero terms, the same bytes. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_spw_tile)(const float* xc, const fcd_i* wo, const float* wv, fcd_i m, fcd_i RS, float* out, fcd_i os,
                       int add, const int NV, const int R)
{
    FCD_VT acc[R][NV];
    const float* xr[R];  /* (row bases: each load one base, the winner's offset and a constant) */
    fcd_i e;
    FCD_UNROLL for (int r_ = 0; r_ < R; r_++) {
        xr[r_] = xc + r_ * RS;
        FCD_UNROLL for (int v_ = 0; v_ < NV; v_++)
            acc[r_][v_] = add ? FCD_LOAD(out + r_ * os + v_ * FCD_VL) : FCD_ZERO();
    }
    for (e = 0; e < m; e++) {
        fcd_i q = wo[e];
        FCD_VT gv = FCD_SET1(wv[e]);
        FCD_UNROLL for (int r_ = 0; r_ < R; r_++)
            FCD_UNROLL for (int v_ = 0; v_ < NV; v_++)
                acc[r_][v_] = FCD_FMA(gv, FCD_LOAD(xr[r_] + q + v_ * FCD_VL), acc[r_][v_]);
    }
    FCD_UNROLL for (int r_ = 0; r_ < R; r_++)
        FCD_UNROLL for (int v_ = 0; v_ < NV; v_++) FCD_STORE(out + r_ * os + v_ * FCD_VL, acc[r_][v_]);
}

/* Accumulators of a pooled weight-gradient tile, at most (AVX-512: a 5x5 kernel's 25 in one tile). */
#define FCD_SPW_ACC (FCD_TAPS_MAX)

/* fcd_spw_tile of NV (1 to 8) vectors and FCD_SPW_ACC / NV rows (_full) or one row (_row). */
#define FCD_SPW(NV_) \
FCD_NO_PCOM __attribute__((noinline)) static void \
FCD_NAME(fcd_spw_full_##NV_)(const float* xc, const fcd_i* wo, const float* wv, fcd_i m, fcd_i RS, float* out, \
                             fcd_i os, int add) \
{ \
    FCD_NAME(fcd_spw_tile)(xc, wo, wv, m, RS, out, os, add, NV_, FCD_SPW_ACC / NV_); \
} \
FCD_NO_PCOM __attribute__((noinline)) static void \
FCD_NAME(fcd_spw_row_##NV_)(const float* xc, const fcd_i* wo, const float* wv, fcd_i m, fcd_i RS, float* out, \
                            fcd_i os, int add) \
{ \
    FCD_NAME(fcd_spw_tile)(xc, wo, wv, m, RS, out, os, add, NV_, 1); \
}
FCD_SPW(1)
FCD_SPW(2)
FCD_SPW(3)
FCD_SPW(4)
FCD_SPW(5)
FCD_SPW(6)
FCD_SPW(7)
FCD_SPW(8)
#undef FCD_SPW

/* One pass of fcd_spw_tile: NV (1 to 8) vectors x R rows, R = FCD_SPW_ACC / NV or 1. */
static void FCD_NAME(fcd_spw_pass)(const float* xc, const fcd_i* wo, const float* wv, fcd_i m, fcd_i RS, fcd_i NV,
                                   fcd_i R, float* out, fcd_i os, int add)
{
    switch (NV) {
#define FCD_SPW_CASE(NV_) case NV_: \
        if (R == 1) FCD_NAME(fcd_spw_row_##NV_)(xc, wo, wv, m, RS, out, os, add); \
        else FCD_NAME(fcd_spw_full_##NV_)(xc, wo, wv, m, RS, out, os, add); \
        break;
    FCD_SPW_CASE(1) FCD_SPW_CASE(2) FCD_SPW_CASE(3) FCD_SPW_CASE(4) FCD_SPW_CASE(5) FCD_SPW_CASE(6)
    FCD_SPW_CASE(7) FCD_SPW_CASE(8)
#undef FCD_SPW_CASE
    default: break;
    }
}

/* Input gradient from the winners (docs/PERFORMANCE.md, section 9, "Pooled input gradient"):
 * one row of OW output cells through one pass (a kernel row's run of NV vectors).  Cell x's
 * tile is out + x*VL ... + (NV-1)*VL (the padded channels-last gradient); its cnt[x] winners
 * are co[x*S + e] (kernel offsets from wb) and cg[x*S + e] (gradients), in channel order.  The
 * tiles of neighbouring cells overlap in all but one vector, so the tile rolls along the row in
 * registers: each cell stores its first vector and loads one new one.  Each vector is one chain
 * of FMAs, cell by cell, winner by winner. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_spd_tile)(const float* wb, const fcd_i* co, const float* cg, const int* cnt, fcd_i S, fcd_i OW,
                       float* out, const int NV)
{
    FCD_VT acc[NV];
    fcd_i x, e;
    FCD_UNROLL for (int v_ = 0; v_ < NV; v_++)
        acc[v_] = FCD_LOAD(out + v_ * FCD_VL);
    for (x = 0; x < OW; x++) {
        const fcd_i* q = co + x * S;
        const float* g = cg + x * S;
        fcd_i m = cnt[x];
        for (e = 0; e < m; e++) {
            const float* p = wb + q[e];
            FCD_VT gv = FCD_SET1(g[e]);
            FCD_UNROLL for (int v_ = 0; v_ < NV; v_++)
                acc[v_] = FCD_FMA(gv, FCD_LOAD(p + v_ * FCD_VL), acc[v_]);
        }
        FCD_STORE(out + x * FCD_VL, acc[0]);
        FCD_UNROLL for (int v_ = 0; v_ + 1 < NV; v_++)
            acc[v_] = acc[v_ + 1];
        if (x + 1 < OW)
            acc[NV - 1] = FCD_LOAD(out + (x + NV) * FCD_VL);
    }
    FCD_UNROLL for (int v_ = 0; v_ + 1 < NV; v_++)
        FCD_STORE(out + (OW + v_) * FCD_VL, acc[v_]);
}

#define FCD_SPD(NV_) \
FCD_NO_PCOM __attribute__((noinline)) static void \
FCD_NAME(fcd_spd_row_##NV_)(const float* wb, const fcd_i* co, const float* cg, const int* cnt, fcd_i S, fcd_i OW, \
                            float* out) \
{ \
    FCD_NAME(fcd_spd_tile)(wb, co, cg, cnt, S, OW, out, NV_); \
}
FCD_SPD(1)
FCD_SPD(2)
FCD_SPD(3)
FCD_SPD(4)
FCD_SPD(5)
FCD_SPD(6)
FCD_SPD(7)
FCD_SPD(8)
#undef FCD_SPD

/* fcd_spd_tile of NV (1 to 8) vectors. */
static void FCD_NAME(fcd_spd_row)(const float* wb, const fcd_i* co, const float* cg, const int* cnt, fcd_i S,
                                  fcd_i OW, fcd_i NV, float* out)
{
    switch (NV) {
#define FCD_SPD_CASE(NV_) case NV_: FCD_NAME(fcd_spd_row_##NV_)(wb, co, cg, cnt, S, OW, out); break;
    FCD_SPD_CASE(1) FCD_SPD_CASE(2) FCD_SPD_CASE(3) FCD_SPD_CASE(4) FCD_SPD_CASE(5) FCD_SPD_CASE(6)
    FCD_SPD_CASE(7) FCD_SPD_CASE(8)
#undef FCD_SPD_CASE
    default: break;
    }
}

/* Image src (C, H, W) -> CB = ceil(C / VL) blocks of VL channels, block b at dst + b*PS: (Hp, Wp,
 * VL) channels-last, zero padded (cell (h, w) at row pt + h, column pl + w; channels past C
 * zero), through tmp (H*W*VL floats).  Returns nonzero if a value is not finite. */
static int FCD_NAME(fcd_pack_cl)(const float* src, fcd_i C, fcd_i H, fcd_i W, fcd_i pt, fcd_i pl, fcd_i Hp,
                                 fcd_i Wp, fcd_i PS, float* tmp, float* dst)
{
    const unsigned* u = (const unsigned*)tmp;
    unsigned bad = 0;
    fcd_i b, h, e, n = H * W * FCD_VL;
    for (b = 0; b * FCD_VL < C; b++) {
        fcd_i nc = C - b * FCD_VL < FCD_VL ? C - b * FCD_VL : FCD_VL;
        float* d = dst + b * PS;
        FCD_NAME(fcd_transpose)(src + b * FCD_VL * H * W, nc, H * W, FCD_VL, 0.0f, tmp);
        for (e = 0; e < n; e++)  /* (exponent all ones: inf or NaN) */
            bad |= (~u[e] & 0x7f800000u) == 0u;
        memset(d, 0, (size_t)(Hp * Wp * FCD_VL) * sizeof(float));
        for (h = 0; h < H; h++)
            memcpy(d + ((pt + h) * Wp + pl) * FCD_VL, tmp + h * W * FCD_VL, (size_t)(W * FCD_VL) * sizeof(float));
    }
    return bad != 0;
}

static const fcd_isa_kernels FCD_NAME(fcd_kernels) = {
    FCD_NAME(fcd_fwd_image), FCD_NAME(fcd_fwd_image_ct), FCD_NAME(fcd_bwd_weight_tile), FCD_NAME(fcd_fma_probe),
    FCD_NAME(fcd_pack_grad_t), FCD_NAME(fcd_pack_input), FCD_NAME(fcd_unpack_output),
    FCD_NAME(fcw_images), FCD_NAME(fcw_wgrad), FCD_NAME(fcw_weights6), FCD_NAME(fcd_interleave_phases),
    FCD_NAME(fcd_unpool_grad_t), FCD_NAME(fcd_grad_t_sums), FCD_NAME(fcd_spw_pass),
    FCD_NAME(fcd_spd_row), FCD_NAME(fcd_pack_cl), FCD_J, FCD_VL, FCD_WT, FCD_TAPS_MAX, FCD_JC, FCD_CR};

#undef FCD_SUFFIX
#undef FCD_VL
#undef FCD_J
#undef FCD_JC
#undef FCD_CR
#undef FCD_VMAX
#undef FCD_WT
#undef FCD_TAPS_MAX
#undef FCD_VT
#undef FCD_LOAD
#undef FCD_STORE
#undef FCD_SET1
#undef FCD_ZERO
#undef FCD_FMA
#undef FCD_ADD
#undef FCD_SUB
#undef FCD_RELU
#undef FCD_SEL_EQ
#undef FCD_ONE_IF_POS
#undef FCD_MUL
#undef FCD_STORE_N
#undef FCD_MASK_T
#undef FCD_LANES
#undef FCD_LOAD_MASKED
/* (a path's optional shuffles) */
#undef FCD_TRANSPOSE
#undef FCD_EVENS
#undef FCD_DEINTERLEAVE
#undef FCD_INTERLEAVE
#undef FCD_PUT_PAIRS
#undef FCD_QUADS
#undef FCD_DEAL4
