/* Micro-kernels of the direct convolution, compiled once per ISA by conv_direct.h, which
 * defines FCD_SUFFIX, FCD_VL (lanes), FCD_J (output channels per block), FCD_VMAX (pixel
 * vectors per forward tile), FCD_KB (taps per weight-gradient tile) and the vector macros.
 * Accumulator tiles: J*VMAX (forward) and J*KB (weight gradient) vectors, kept in registers
 * (24 zmm with AVX-512).  Every output is accumulated in one fixed order (FMA by FMA). */
#define FCD_CAT2(a, b) a##_##b
#define FCD_CAT(a, b) FCD_CAT2(a, b)
#define FCD_NAME(n) FCD_CAT(n, FCD_SUFFIX)
#ifndef FCD_UNROLL  /* register tiles: the small constant loops must be fully unrolled */
#define FCD_UNROLL _Pragma("GCC unroll 32")
#endif

/* V pixel vectors (grid positions p0 ...) x J output channels of block wpb, over all C*KK
 * taps; the result goes to yb[jj*PR + p - p0]. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_fwd_tile)(const float* xq, const fcd_i* tab, const float* wpb, fcd_i C, fcd_i KK,
                       fcd_i plane, float* yb, fcd_i PR, const int V)
{
    FCD_VT acc[FCD_J][FCD_VMAX];
    fcd_i c, kk;
    int jj, v;
    FCD_UNROLL
    for (jj = 0; jj < FCD_J; jj++)
        FCD_UNROLL
        for (v = 0; v < V; v++)
            acc[jj][v] = FCD_ZERO();
    for (c = 0; c < C; c++) {
        const float* xc = xq + c * plane;
        const float* wc = wpb + c * KK * FCD_J;
        for (kk = 0; kk < KK; kk++) {
            const float* xk = xc + tab[kk];
            const float* wk = wc + kk * FCD_J;
            FCD_VT xv[FCD_VMAX];
            FCD_UNROLL
            for (v = 0; v < V; v++)
                xv[v] = FCD_LOAD(xk + v * FCD_VL);
            FCD_UNROLL
            for (jj = 0; jj < FCD_J; jj++) {
                FCD_VT b = FCD_SET1(wk[jj]);
                FCD_UNROLL
                for (v = 0; v < V; v++)
                    acc[jj][v] = FCD_FMA(xv[v], b, acc[jj][v]);
            }
        }
    }
    FCD_UNROLL
    for (jj = 0; jj < FCD_J; jj++)
        FCD_UNROLL
        for (v = 0; v < V; v++)
            FCD_STORE(yb + jj * PR + v * FCD_VL, acc[jj][v]);
}

/* One image: xq (packed input) -> yg (OCP, PR) grid result, no bias. */
static void FCD_NAME(fcd_fwd_image)(const fcd_geo* g, const float* xq, const fcd_i* tab,
                                    const float* wp, float* yg)
{
    fcd_i KK = g->KH * g->KW, NV = (g->P + FCD_VL - 1) / FCD_VL, ob, pv;
    for (ob = 0; ob < g->OCP / FCD_J; ob++) {
        const float* wpb = wp + ob * g->C * KK * FCD_J;
        float* yb = yg + ob * FCD_J * g->PR;
        for (pv = 0; pv + FCD_VMAX <= NV; pv += FCD_VMAX)
            FCD_NAME(fcd_fwd_tile)(xq + pv * FCD_VL, tab, wpb, g->C, KK, g->plane,
                                   yb + pv * FCD_VL, g->PR, FCD_VMAX);
        switch (NV - pv) {  /* FCD_VMAX <= 3 */
        case 2:
            FCD_NAME(fcd_fwd_tile)(xq + pv * FCD_VL, tab, wpb, g->C, KK, g->plane,
                                   yb + pv * FCD_VL, g->PR, 2);
            break;
        case 1:
            FCD_NAME(fcd_fwd_tile)(xq + pv * FCD_VL, tab, wpb, g->C, KK, g->plane,
                                   yb + pv * FCD_VL, g->PR, 1);
            break;
        default:
            break;
        }
    }
}

/* Weight-gradient tile: J output channels x K taps (kb ...), accumulated over NV pixel
 * vectors into the lane partial sums am[(kb + k)*J*VL + jj*VL + lane]. */
static inline __attribute__((always_inline)) void
FCD_NAME(fcd_bww_tile)(const float* xc, const float* gb, const fcd_i* tab, fcd_i kb, fcd_i NV,
                       fcd_i PR, float* am, const int K)
{
    FCD_VT acc[FCD_J][FCD_KB];
    fcd_i pv;
    int jj, k;
    FCD_UNROLL
    for (k = 0; k < K; k++)
        FCD_UNROLL
        for (jj = 0; jj < FCD_J; jj++)
            acc[jj][k] = FCD_LOAD(am + ((kb + k) * FCD_J + jj) * FCD_VL);
    for (pv = 0; pv < NV; pv++) {
        FCD_VT xv[FCD_KB];
        FCD_UNROLL
        for (k = 0; k < K; k++)
            xv[k] = FCD_LOAD(xc + tab[kb + k] + pv * FCD_VL);
        FCD_UNROLL
        for (jj = 0; jj < FCD_J; jj++) {
            FCD_VT gv = FCD_LOAD(gb + jj * PR + pv * FCD_VL);
            FCD_UNROLL
            for (k = 0; k < K; k++)
                acc[jj][k] = FCD_FMA(gv, xv[k], acc[jj][k]);
        }
    }
    FCD_UNROLL
    for (k = 0; k < K; k++)
        FCD_UNROLL
        for (jj = 0; jj < FCD_J; jj++)
            FCD_STORE(am + ((kb + k) * FCD_J + jj) * FCD_VL, acc[jj][k]);
}

/* Weight gradient of output-channel block ob summed over images n0 .. n1-1 (in order):
 * gw (OC, C, KK) rows of the block are written.  xq_all / gg_all: packed inputs and
 * gradient grids, one image every xs / gs floats.  am: scratch of KK*J*VL floats. */
static void FCD_NAME(fcd_bwd_weight_block)(const fcd_geo* g, const float* xq_all, fcd_i xs,
                                           const float* gg_all, fcd_i gs, fcd_i n0, fcd_i n1,
                                           fcd_i ob, const fcd_i* tab, float* am, float* gw)
{
    fcd_i KK = g->KH * g->KW, NV = (g->P + FCD_VL - 1) / FCD_VL, c, n, kb, kk, jj, l, o;
    for (c = 0; c < g->C; c++) {
        memset(am, 0, (size_t)(KK * FCD_J * FCD_VL) * sizeof(float));
        for (n = n0; n < n1; n++) {
            const float* xc = xq_all + n * xs + c * g->plane;
            const float* gb = gg_all + n * gs + ob * FCD_J * g->PR;
            for (kb = 0; kb + FCD_KB <= KK; kb += FCD_KB)
                FCD_NAME(fcd_bww_tile)(xc, gb, tab, kb, NV, g->PR, am, FCD_KB);
            switch (KK - kb) {  /* FCD_KB <= 3 */
            case 2:
                FCD_NAME(fcd_bww_tile)(xc, gb, tab, kb, NV, g->PR, am, 2);
                break;
            case 1:
                FCD_NAME(fcd_bww_tile)(xc, gb, tab, kb, NV, g->PR, am, 1);
                break;
            default:
                break;
            }
        }
        for (kk = 0; kk < KK; kk++)
            FCD_UNROLL
            for (jj = 0; jj < FCD_J; jj++) {
                o = ob * FCD_J + jj;
                if (o >= g->OC)
                    continue;
                const float* a = am + (kk * FCD_J + jj) * FCD_VL;
                float s = 0.0f;
                FCD_UNROLL
                for (l = 0; l < FCD_VL; l++)  /* lanes in order */
                    s += a[l];
                gw[(o * g->C + c) * KK + kk] = s;
            }
    }
}

/* Peak probe: iters x 24 independent FMA chains of one vector each; returns a lane sum so
 * that nothing is optimised away.  Flops = iters * 24 * VL * 2. */
static float FCD_NAME(fcd_fma_probe)(long iters, float m)
{
    FCD_VT acc[24], mv = FCD_SET1(m), av = FCD_SET1(1e-7f);
    float out[FCD_VL], s = 0.0f;
    long it;
    int k, l;
    FCD_UNROLL
    for (k = 0; k < 24; k++)
        acc[k] = FCD_SET1((float)k);
    for (it = 0; it < iters; it++)
        FCD_UNROLL
        for (k = 0; k < 24; k++)
            acc[k] = FCD_FMA(acc[k], mv, av);
    FCD_UNROLL
    for (k = 1; k < 24; k++)
        acc[0] = acc[0] + acc[k];
    FCD_STORE(out, acc[0]);
    FCD_UNROLL
    for (l = 0; l < FCD_VL; l++)
        s += out[l];
    return s;
}

#undef FCD_SUFFIX
#undef FCD_VL
#undef FCD_J
#undef FCD_VMAX
#undef FCD_KB
#undef FCD_VT
#undef FCD_LOAD
#undef FCD_STORE
#undef FCD_SET1
#undef FCD_ZERO
#undef FCD_FMA
