/* The LM render MLP of one query band, fused: layer 0, every modulated hidden layer, the output layer and the
 * local-ensemble blend run per query with its activations in registers (see fused_render.py for the Python side,
 * which builds this file with the machine's C compiler and calls it on thread-sized slices of a band).
 *
 * Conventions (all arrays float32 unless said, row-major, contiguous):
 *   K neighbours (1 or 4), a band of G groups x r query rows x m query columns; unit u = g * m + col.
 *   pix   int64 (K, G, m)   flat LR pixel index of neighbour k for group g at column col
 *   ry    (K, G, r)         relative row coordinate;  rx (K, m) relative column coordinate
 *   Layer 0, mode 0 (LM-LIIF, LM-CiaoSR: linear in the relative coordinate): with the per-pixel table
 *            l0tab[pix] (P, 16) = latent W0_latent + b0, the weight columns wx, wy (16) of rel_x, rel_y and the cell
 *            term cterm (16, or NULL), b = l0tab[pix] + rx wx + cterm, a = (b + ry wy) * s0[pix] + t0[pix], computed
 *            as (b s0 + t0) + ry (wy s0) with the per-pixel part once per unit (s0 / t0 may be NULL).
 *   Layer 0, mode 1 (LM-LTE): t = basis[pix] = [amp (16) | fy (8) | fx (8)], g = fy ry + fx rx + cphase (8),
 *            x = amp * [cos(pi g), sin(pi g)], a = W0 x + b0 (w0t: W0 transposed, (16 in, 16 out)), then
 *            a = a * s0[pix] + t0[pix] (either may be NULL).
 *   Hidden layer l = 1 .. depth-1: a = (x @ wt[l-1]) * scale[l][pix] + shift[l][pix] (scale may be NULL; the
 *            layer bias is folded into shift), wt (depth-1, 16 in, 16 out). Every layer ends with a ReLU.
 *   Output: pred_k = wout x + bout, wout (4, 16) with rows cout .. 3 zero, bout (cout); cout <= 4.
 *   Blend: area_k = |ry_k rx_k| + 1e-9, w_k = area_{K-1-k} / sum(area) (w = 1 when K = 1); res = sum_k w_k pred_k.
 *   res of query (g, i, col) goes to out[c * plane + rows[g * r + i] * m + col] (rows: int64 (G r)).
 * The products' summation order differs from a BLAS product: results agree with the unfused path to float
 * rounding (about 1e-7 relative); each unit is computed by one thread in a fixed order, so outputs do not depend on
 * the thread count. GCC/Clang vector extensions; the compiler picks the instruction set (-march), OpenMP the threads.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define HD 16
#define KMAX 4

/* PIN(v): keep v in a register (x86): the compiler would otherwise fold the same load into every FMA that
 * reads it, and the loads, not the FMAs, would bound the product. */
#if defined(__x86_64__) || defined(__i386__)
#define PIN(v) __asm__("" : "+x"(v))
#else
#define PIN(v) ((void)0)
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 ld8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }
static inline v8 relu(v8 a) { v8i keep = a > splat(0.f); return (v8)((v8i)a & keep); }
static inline v8 select8(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }

/* out[c] = the sum of the 8 lanes of a[c], c < 4 */
#ifdef __AVX__
#include <immintrin.h>
static inline void sum4(const v8 a[4], float out[4])
{
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a[0], (__m256)a[1]), _mm256_hadd_ps((__m256)a[2], (__m256)a[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
#else
static inline void sum4(const v8 a[4], float out[4])
{
    for (int c = 0; c < 4; c++) {
        float s = 0.f;
        for (int e = 0; e < 8; e++) s += a[c][e];
        out[c] = s;
    }
}
#endif

/* sin and cos of a (radians): reduction by pi/2 in three parts, Taylor polynomials on [-pi/4, pi/4]
 * (truncation below 2e-9 there); |a| up to 2^22 * pi/2 is reduced exactly enough for float. */
static inline void sincos8(v8 a, v8 *s, v8 *c)
{
    const float magic = 12582912.f;                 /* 1.5 * 2^23: adding it rounds to an integer */
    v8 q = (a * splat(0.63661977236758134f) + splat(magic)) - splat(magic);
    v8 r = a - q * splat(1.5703125f);
    r = r - q * splat(4.837512969970703125e-4f);
    r = r - q * splat(7.549789954891882e-8f);
    v8 z = r * r;
    v8 sp = r + r * z * (splat(-1.f / 6) + z * (splat(1.f / 120) + z * (splat(-1.f / 5040) + z * splat(1.f / 362880))));
    v8 cp = splat(1.f) + z * (splat(-0.5f) + z * (splat(1.f / 24) + z * (splat(-1.f / 720) +
            z * (splat(1.f / 40320) + z * splat(-1.f / 3628800)))));
    v8i qi = __builtin_convertvector(q, v8i);
    v8i odd = (qi & 1) != 0;
    v8i sign_bit = (v8i){0, 0, 0, 0, 0, 0, 0, 0} + (int32_t)0x80000000u;
    v8 sv = select8(odd, cp, sp), cv = select8(odd, sp, cp);
    *s = (v8)((v8i)sv ^ (((qi & 2) != 0) & sign_bit));
    *c = (v8)((v8i)cv ^ ((((qi + 1) & 2) != 0) & sign_bit));
}

/* y = x @ w (16 x 16, in-major) for nb rows: two 8-wide accumulators per row; w's row j is read once per
 * block and x_j broadcast from memory. */
static inline __attribute__((always_inline)) void product(int nb, float x[][HD], const float *w, v8 lo[], v8 hi[])
{
    for (int k = 0; k < nb; k++) { lo[k] = splat(0.f); hi[k] = splat(0.f); }
    for (int j = 0; j < HD; j++) {
        v8 wl = ld8(w + j * HD), wh = ld8(w + j * HD + 8);
        PIN(wl);
        PIN(wh);
        for (int k = 0; k < nb; k++) {
            v8 b = splat(x[k][j]);
            lo[k] += b * wl;
            hi[k] += b * wh;
        }
    }
}

struct band {
    int mode, K, G, r, m, depth, cout;
    const int64_t *pix; const float *ry, *rx;
    const float *l0tab, *wx, *wy, *cterm;                       /* mode 0 */
    const float *basis, *cphase, *w0t, *b0;                     /* mode 1 */
    const float *s0, *t0;                                       /* layer 0's modulation (both modes) */
    const float *const *scale, *const *shift;                   /* per layer (index 1 .. depth-1) */
    const float *wt, *wout, *bout;
    float *out; int64_t plane; const int64_t *rows;
};

/* Mode 0, per unit: layer 0's modulated per-pixel term base (b s0 + t0) and row weight (wy s0) of each
 * neighbour, lo / hi halves: lw[k] = {base lo, base hi, wy lo, wy hi}. */
static inline void layer0_unit(const struct band *b, int nb, int64_t col, const int64_t p[], v8 lw[][4])
{
    for (int k = 0; k < nb; k++) {
        const float *t = b->l0tab + p[k] * HD;
        v8 rx = splat(b->rx[(int64_t)k * b->m + col]);
        v8 lo = ld8(t) + rx * ld8(b->wx), hi = ld8(t + 8) + rx * ld8(b->wx + 8);
        v8 yl = ld8(b->wy), yh = ld8(b->wy + 8);
        if (b->cterm) { lo += ld8(b->cterm); hi += ld8(b->cterm + 8); }
        if (b->s0) {
            v8 sl = ld8(b->s0 + p[k] * HD), sh = ld8(b->s0 + p[k] * HD + 8);
            lo *= sl; hi *= sh; yl *= sl; yh *= sh;
        }
        if (b->t0) { lo += ld8(b->t0 + p[k] * HD); hi += ld8(b->t0 + p[k] * HD + 8); }
        lw[k][0] = lo; lw[k][1] = hi; lw[k][2] = yl; lw[k][3] = yh;
    }
}

#define INLINE static inline __attribute__((always_inline))

/* Layer 0 of the nb neighbours of one query (relative row coordinates ry[k]) into x. */
INLINE void layer0(const struct band *b, int nb, int64_t col, const int64_t p[], v8 lw[][4], const float ry[],
                   float x[][HD])
{
    if (b->mode == 0) {
        for (int k = 0; k < nb; k++) {
            v8 y = splat(ry[k]);
            st8(x[k], relu(lw[k][0] + y * lw[k][2]));
            st8(x[k] + 8, relu(lw[k][1] + y * lw[k][3]));
        }
        return;
    }
    float in[KMAX][HD] __attribute__((aligned(32)));
    v8 lo[KMAX], hi[KMAX];
    for (int k = 0; k < nb; k++) {
        const float *t = b->basis + p[k] * 2 * HD;
        v8 gph = ld8(t + HD) * splat(ry[k]) + ld8(t + HD + 8) * splat(b->rx[(int64_t)k * b->m + col]);
        if (b->cphase) gph += ld8(b->cphase);
        v8 sv, cv;
        sincos8(gph * splat(3.14159265358979f), &sv, &cv);
        st8(in[k], cv * ld8(t));
        st8(in[k] + 8, sv * ld8(t + 8));
    }
    product(nb, in, b->w0t, lo, hi);
    const v8 bl = ld8(b->b0), bh = ld8(b->b0 + 8);
    for (int k = 0; k < nb; k++) {
        v8 a = lo[k] + bl, c = hi[k] + bh;
        if (b->s0) { a *= ld8(b->s0 + p[k] * HD); c *= ld8(b->s0 + p[k] * HD + 8); }
        if (b->t0) { a += ld8(b->t0 + p[k] * HD); c += ld8(b->t0 + p[k] * HD + 8); }
        st8(x[k], relu(a));
        st8(x[k] + 8, relu(c));
    }
}

/* Hidden layer l of the nb neighbours of one query, in place on x. */
INLINE void hidden(const struct band *b, int nb, int l, const int64_t p[], float x[][HD])
{
    v8 lo[KMAX], hi[KMAX];
    product(nb, x, b->wt + (int64_t)(l - 1) * HD * HD, lo, hi);
    const float *S = b->scale[l], *T = b->shift[l];
    for (int k = 0; k < nb; k++) {
        v8 a = lo[k], c = hi[k];
        if (S) { a *= ld8(S + p[k] * HD); c *= ld8(S + p[k] * HD + 8); }
        if (T) { a += ld8(T + p[k] * HD); c += ld8(T + p[k] * HD + 8); }
        st8(x[k], relu(a));
        st8(x[k] + 8, relu(c));
    }
}

/* Output layer, blend and store of one query (row i of the unit). */
INLINE void finish(const struct band *b, int nb, int64_t g, int64_t col, int i, const float ry[], float x[][HD])
{
    float pred[KMAX][4];
    for (int k = 0; k < nb; k++) {
        v8 xl = ld8(x[k]), xh = ld8(x[k] + 8), acc[4];
        for (int ch = 0; ch < 4; ch++)
            acc[ch] = ld8(b->wout + ch * HD) * xl + ld8(b->wout + ch * HD + 8) * xh;
        sum4(acc, pred[k]);
        for (int ch = 0; ch < b->cout; ch++) pred[k][ch] += b->bout[ch];
    }
    float wgt[KMAX];
    if (nb == 1) {
        wgt[0] = 1.f;
    } else {
        float area[KMAX], total = 0.f;
        for (int k = 0; k < nb; k++) {
            area[k] = fabsf(ry[k] * b->rx[(int64_t)k * b->m + col]) + 1e-9f;
            total += area[k];
        }
        for (int k = 0; k < nb; k++) wgt[k] = area[nb - 1 - k] / total;
    }
    float *dst = b->out + b->rows[g * b->r + i] * b->m + col;
    for (int ch = 0; ch < b->cout; ch++) {
        float s = pred[0][ch] * wgt[0];
        for (int k = 1; k < nb; k++) s += pred[k][ch] * wgt[k];
        dst[ch * b->plane] = s;
    }
}

/* nq (1 .. NQ) consecutive queries i, i + 1, ... of a unit, layer by layer in turn: one query's product overlaps
 * the previous one's modulation / ReLU / store latency (out-of-order execution) instead of waiting for it. */
#ifndef NQ
#define NQ 2
#endif
INLINE void render_queries(const struct band *b, int nb, int nq, int64_t g, int64_t col, int i, const int64_t p[],
                           v8 lw[][4])
{
    float x[NQ][KMAX][HD] __attribute__((aligned(32)));
    float ry[NQ][KMAX];
    for (int q = 0; q < nq; q++)
        for (int k = 0; k < nb; k++) ry[q][k] = b->ry[((int64_t)k * b->G + g) * b->r + i + q];
    for (int q = 0; q < nq; q++) layer0(b, nb, col, p, lw, ry[q], x[q]);
    for (int l = 1; l < b->depth; l++)
        for (int q = 0; q < nq; q++) hidden(b, nb, l, p, x[q]);
    for (int q = 0; q < nq; q++) finish(b, nb, g, col, i + q, ry[q], x[q]);
}

/* Units [u0, u1) of a band (unit = g * m + col, all r rows and K neighbours), split over nthreads OpenMP threads
 * (the caller's runtime: loaded into a PyTorch process, this library binds to the libgomp PyTorch already loaded,
 * so the kernel runs on PyTorch's own thread team instead of competing with its spinning workers). Returns 0, or
 * -1 when the arguments are outside what this kernel does (K not 1 or 4, cout > 4, depth < 1), -2 when a pixel
 * index is outside [0, P) or an output row outside [0, n) (those units are not rendered). */
int render_units(int mode, int K, int G, int r, int m, int depth, int cout,
                 const int64_t *pix, const float *ry, const float *rx,
                 const float *l0tab, const float *wx, const float *wy, const float *cterm,
                 const float *basis, const float *cphase, const float *w0t, const float *b0,
                 const float *s0, const float *t0,
                 const float *const *scale, const float *const *shift,
                 const float *wt, const float *wout, const float *bout,
                 float *out, int64_t plane, const int64_t *rows, int64_t u0, int64_t u1, int nthreads,
                 int64_t P, int64_t n)
{
    if (!(K == 1 || K == KMAX) || cout < 1 || cout > 4 || depth < 1 || (mode != 0 && mode != 1) || nthreads < 1)
        return -1;
    const struct band b = {mode, K, G, r, m, depth, cout, pix, ry, rx, l0tab, wx, wy, cterm, basis, cphase, w0t, b0,
                           s0, t0, scale, shift, wt, wout, bout, out, plane, rows};
    int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(|:bad)
    for (int64_t u = u0; u < u1; u++) {
        v8 lw[KMAX][4];
        const int64_t g = u / m, col = u % m;
        int64_t p[KMAX];
        int outside = 0;
        for (int k = 0; k < K; k++) {
            p[k] = pix[((int64_t)k * G + g) * m + col];
            outside |= p[k] < 0 || p[k] >= P;
        }
        for (int i = 0; i < r; i++) outside |= rows[g * r + i] < 0 || rows[g * r + i] >= n;
        if (outside) { bad = 1; continue; }
        if (mode == 0) layer0_unit(&b, K, col, p, lw);
        int i = 0;
        for (; i + NQ <= r; i += NQ) {
            if (K == KMAX) render_queries(&b, KMAX, NQ, g, col, i, p, lw);
            else render_queries(&b, 1, NQ, g, col, i, p, lw);
        }
        for (; i < r; i++) {
            if (K == KMAX) render_queries(&b, KMAX, 1, g, col, i, p, lw);
            else render_queries(&b, 1, 1, g, col, i, p, lw);
        }
    }
    return bad ? -2 : 0;
}
