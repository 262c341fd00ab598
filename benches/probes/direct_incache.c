/* The direct convolution's per-image pieces on data that stays in cache, one thread: the
 * input packing, the forward tiles (with their store) and the weight-gradient tiles, against
 * the FMA peak.  What a primitive loses beyond these is memory traffic and threading.
 *
 *   gcc -O3 -fno-math-errno -ffp-contract=off -Isrc_ext benches/probes/direct_incache.c -o /tmp/incache
 *   /tmp/incache [PEAK_GFLOPS [ISA]]   (default 220: benches/ceilings.py, one thread; ISA 0
 *                                       baseline, 1 avx2, 2 avx512, default the best)
 *
 * Shapes: the seed networks' convolutions (C, OC, H, K, stride); padding K / 2. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "conv_direct.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float* buf(fcd_i n)
{
    float* p = aligned_alloc(64, (size_t)(n + 64) * sizeof(float) / 64 * 64 + 64 * sizeof(float));
    for (fcd_i i = 0; i < n + 64; i++)
        p[i] = (float)(i % 7) * 0.1f;
    return p;
}

static void shape(int C, int OC, int H, int K, int s, double peak)
{
    int pad = K / 2, OH = (H + 2 * pad - K) / s + 1, reps = 200000000 / (2 * OC * C * K * K * OH * OH) + 10;
    fcd_geo g;
    fcd_geo_init(&g, C, H, H, 1, 1, OC, K, K, s, s, pad, pad, OH, OH, fcd_J);
    fcd_i L = g.P / fcd_VL + 1 + g.OH * (g.OW / fcd_VL + 1), tab[64], r, u;
    fcd_i KK = K * K, Q = C * KK, OCV = (OC + fcd_VL - 1) / fcd_VL * fcd_VL;
    int V = (OCV / fcd_VL) % 2 == 0 ? 2 : 1, rows, kw = s == 1 && (K == 3 || K == 5) ? K : 0;
    fcd_i T = kw ? fcd_WT * 2 / V / kw * kw : fcd_WT * (2 / V), NQB = (Q + T - 1) / T, NOB = OCV / (V * fcd_VL);
    float *x = buf(C * H * H), *w = buf(OC * C * KK), *gy = buf(OC * OH * OH), *bias = buf(OC);
    float *wp = buf(g.OCP * C * KK), *xq = buf(g.xq_size), *y = buf(OC * OH * OH), *yg = buf(g.OCP * g.PR);
    float *gt = buf(OH * OH * OCV), *part = buf(NQB * T * OCV);
    fcd_i* st = malloc(3 * L * sizeof(fcd_i));
    fcd_i* off = calloc(NQB * T, sizeof(fcd_i));
    fcd_pack_weights(&g, w, 0, wp);
    fcd_make_tab(&g, tab);
    for (fcd_i q = 0; q < Q; q++)
        off[q] = (q / KK) * g.plane + tab[q % KK];
    fcd_i NS = fcd_pixel_starts(&g, fcd_VL, st, st + L, st + 2 * L, &rows);
    fcd_pack_input(&g, x, xq, 0);
    fcd_pack_grad_t(&g, gy, OCV, gt);
    double t0 = now();
    for (r = 0; r < reps; r++)
        fcd_pack_input(&g, x, xq, 1);
    double tp = (now() - t0) / reps;
    t0 = now();
    for (r = 0; r < reps; r++) {
        if (rows)
            fcd_fwd_image(&g, xq, tab, wp, st, st + L, st + 2 * L, NS, bias, 0, y, yg);
        else {
            fcd_fwd_image(&g, xq, tab, wp, st, NULL, NULL, NS, NULL, 0, NULL, yg);
            fcd_unpack_output(&g, yg, bias, 0, y);
        }
    }
    double tf = (now() - t0) / reps;
    t0 = now();
    for (r = 0; r < reps; r++)
        for (u = 0; u < NOB * NQB; u++)
            fcd_bwd_weight_tile(xq, 0, gt, 0, 1, OCV, OH, OH, g.Wq, u / NQB, V, &off[(u % NQB) * T],
                                &part[(u % NQB) * T * OCV], r > 0, kw, T);
    double tw = (now() - t0) / reps;
    double gf = 2.0 * OC * C * KK * OH * OH / 1e9;
    printf("| %d -> %d, %dx%d, k%d s%d | %.2f | %.2f (%.0f%%) | %.2f (%.0f%%) |\n", C, OC, H, H, K, s, tp * 1e6,
           tf * 1e6, gf / tf / peak * 100, tw * 1e6, gf / tw / peak * 100);
}

int main(int argc, char** argv)
{
    double peak = argc > 1 ? atof(argv[1]) : 220.0;
    int isa = argc > 2 ? atoi(argv[2]) : fcd_cpu_supports(2) ? 2 : fcd_cpu_supports(1) ? 1 : 0;
    if (fcd_set_isa(isa) < 0) {
        fprintf(stderr, "ISA %d is not supported by this CPU\n", isa);
        return 1;
    }
    printf("in-cache, one image, one thread, ISA %d; us per image (%% of %.0f GFLOP/s)\n", isa, peak);
    printf("| shape | input packing | forward tiles + store | weight-gradient tiles |\n|---|---:|---:|---:|\n");
    shape(1, 32, 28, 5, 1, peak);
    shape(32, 64, 14, 5, 1, peak);
    shape(1, 16, 28, 5, 1, peak);
    shape(16, 32, 14, 5, 1, peak);
    shape(3, 16, 32, 3, 1, peak);
    shape(16, 16, 32, 3, 1, peak);
    shape(32, 32, 16, 3, 1, peak);
    shape(64, 64, 8, 3, 1, peak);
    shape(16, 32, 32, 3, 2, peak);
    shape(32, 64, 16, 3, 2, peak);
    return 0;
}
