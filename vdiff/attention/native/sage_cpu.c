/* Fused block-sparse INT8 attention for x86 CPUs with AVX512-VNNI and AVX512-BF16.
 *
 * One task = one (batch x head, Q block) row of the block mask. Per kept K block (64 keys) and
 * per group of 4 query rows, everything stays in registers or L1: the INT8 Q.K^T (vpdpbusd, Q
 * offset to unsigned and corrected by 128 * sum(k)), the scale, an online softmax in base 2, P
 * rounded to bf16 and P.V by vdpbf16ps into the group's fp32 accumulators. Unlike the tiled torch
 * path, no score tile goes to memory. Numerics: those of vdiff.attention.quant (INT32 scores of
 * INT8 Q and K with power-of-two block scales, P.V in bf16 with fp32 accumulation).
 *
 * Built at first use by vdiff/attention/native_cpu.py (cc -O3 -fopenmp, AVX512 flags) and
 * called through ctypes; the threads are those of the OpenMP runtime torch itself loaded.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define BK 64 /* keys per K block: 4 zmm of 16 */
#define RG 4  /* query rows per register group */

/* 2^x for x <= 0 (x = -inf gives 0): degree-6 polynomial on the fraction, relative error ~2e-7 */
static inline __m512 exp2_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n); /* [-0.5, 0.5] */
    __m512 p = _mm512_set1_ps(1.5252734e-5f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530e-4f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* Scores of query rows r0..r0+3 against one K block, the online-softmax update of their m and
 * l, P (bf16) into p_out[4][64] and each row's rescale factor into alpha_out[4]. Returns the
 * largest (block max - new running max) over the rows below n_real (base 2), for the λ skip. */
static inline float qk_softmax_group(const uint8_t *qr, const int8_t *kp, const int32_t *kc,
                                     __m512 sc, const __mmask16 lim[4], int64_t d, float *m,
                                     float *l, uint16_t *p_out, float *alpha_out, int n_real) {
    const int64_t dq = d / 4;
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512i s[RG][4];
    for (int r = 0; r < RG; r++)
        for (int c = 0; c < 4; c++) s[r][c] = _mm512_setzero_si512();
    for (int64_t j = 0; j < dq; j++) {
        const __m512i k0 = _mm512_load_si512((const void *)(kp + j * 256));
        const __m512i k1 = _mm512_load_si512((const void *)(kp + j * 256 + 64));
        const __m512i k2 = _mm512_load_si512((const void *)(kp + j * 256 + 128));
        const __m512i k3 = _mm512_load_si512((const void *)(kp + j * 256 + 192));
        for (int r = 0; r < RG; r++) {
            int32_t qq;
            memcpy(&qq, qr + r * d + j * 4, 4);
            const __m512i a = _mm512_set1_epi32(qq);
            s[r][0] = _mm512_dpbusd_epi32(s[r][0], a, k0);
            s[r][1] = _mm512_dpbusd_epi32(s[r][1], a, k1);
            s[r][2] = _mm512_dpbusd_epi32(s[r][2], a, k2);
            s[r][3] = _mm512_dpbusd_epi32(s[r][3], a, k3);
        }
    }
    float gap = -INFINITY;
    for (int r = 0; r < RG; r++) {
        __m512 x[4];
        for (int c = 0; c < 4; c++) {
            const __m512i corr = _mm512_loadu_si512((const void *)(kc + 16 * c));
            x[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s[r][c], corr)), sc);
            x[c] = _mm512_mask_blend_ps(lim[c], ninf, x[c]);
        }
        const float bm = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3])));
        const float mn = bm > m[r] ? bm : m[r];
        alpha_out[r] = exp2f(m[r] - mn);
        m[r] = mn;
        if (r < n_real && bm - mn > gap) gap = bm - mn;
        const __m512 mv = _mm512_set1_ps(mn);
        __m512 p[4];
        for (int c = 0; c < 4; c++) p[c] = exp2_neg(_mm512_sub_ps(x[c], mv));
        l[r] = l[r] * alpha_out[r] +
               _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3])));
        _mm512_store_si512((void *)(p_out + r * BK), (__m512i)_mm512_cvtne2ps_pbh(p[1], p[0]));
        _mm512_store_si512((void *)(p_out + r * BK + 32), (__m512i)_mm512_cvtne2ps_pbh(p[3], p[2]));
    }
    return gap;
}

/* acc rows (4 x d, fp32) := acc * alpha + P (4 x 64, bf16) . V block (vdpbf16ps) */
static inline void pv_group(float *acc, const uint16_t *pb, const float *alpha, const uint16_t *vp,
                            int64_t d) {
    const int64_t nd = d / 16;
    for (int64_t c0 = 0; c0 < nd; c0 += 4) {
        __m512 o[RG][4];
        for (int r = 0; r < RG; r++) {
            const __m512 al = _mm512_set1_ps(alpha[r]);
            for (int c = 0; c < 4; c++)
                o[r][c] = _mm512_mul_ps(_mm512_load_ps(acc + r * d + (c0 + c) * 16), al);
        }
        for (int64_t jp = 0; jp < BK / 2; jp++) {
            const uint16_t *vr = vp + jp * d * 2 + c0 * 32;
            const __m512bh v0 = (__m512bh)_mm512_load_si512((const void *)(vr));
            const __m512bh v1 = (__m512bh)_mm512_load_si512((const void *)(vr + 32));
            const __m512bh v2 = (__m512bh)_mm512_load_si512((const void *)(vr + 64));
            const __m512bh v3 = (__m512bh)_mm512_load_si512((const void *)(vr + 96));
            for (int r = 0; r < RG; r++) {
                int32_t pp;
                memcpy(&pp, pb + r * BK + 2 * jp, 4);
                const __m512bh a = (__m512bh)_mm512_set1_epi32(pp);
                o[r][0] = _mm512_dpbf16_ps(o[r][0], a, v0);
                o[r][1] = _mm512_dpbf16_ps(o[r][1], a, v1);
                o[r][2] = _mm512_dpbf16_ps(o[r][2], a, v2);
                o[r][3] = _mm512_dpbf16_ps(o[r][3], a, v3);
            }
        }
        for (int r = 0; r < RG; r++)
            for (int c = 0; c < 4; c++) _mm512_store_ps(acc + r * d + (c0 + c) * 16, o[r][c]);
    }
}

/* q_u8    (BH, nq*bq, d)  INT8 Q + 128
 * q_scale (BH, nq)        Q block scales times log2(e)
 * k_pack  (BH, nk, d/4, 64, 4) INT8 K, four channels of a key per 32-bit lane
 * k_corr  (BH, nk*64)     128 * sum_d k (int32)
 * k_scale (BH, nk)
 * v_pack  (BH, nk, 32, d, 2) bf16 V, two keys of a channel per 32-bit lane
 * row_ptr (BH*nq + 1), cols: kept K blocks of each mask row (CSR), ascending
 * order   (BH*nq)         rows in the order to hand them out (heaviest first)
 * lam     (BH) or NULL    λ skip in base 2: P.V of a kept block is skipped when, for every real
 *                         query row of the Q block, the block's largest score is below the row's
 *                         running maximum by more than |λ| (SpargeAttn's rule, as the Triton
 *                         kernel applies it); the normaliser still counts the block
 * out     (BH, nq*bq, d) fp32; lse (BH, nq*bq) fp32 natural log, or NULL
 * n_q_valid: real query rows (the rest of the last Q block is padding)
 */
int vdiff_sage_attention(const uint8_t *q_u8, const float *q_scale, const int8_t *k_pack,
                         const int32_t *k_corr, const float *k_scale, const uint16_t *v_pack,
                         const int64_t *row_ptr, const int32_t *cols, const int64_t *order,
                         const float *lam, float *out, float *lse, int64_t bh, int64_t nq,
                         int64_t nk, int64_t bq, int64_t n_q_valid, int64_t n_k_valid, int64_t d,
                         int nthreads) {
    if (d % 64 != 0 || bq % RG != 0) return 1;
    const int64_t rows = bh * nq;
    const int64_t dq = d / 4, nd = d / 16;
    const int tail = (int)(n_k_valid - (nk - 1) * BK); /* valid keys of the last block, 1..64 */
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        /* aligned_alloc wants a size that is a multiple of the alignment */
        const size_t row_bytes = ((size_t)bq * sizeof(float) + 63) & ~(size_t)63;
        float *acc = (float *)aligned_alloc(64, (size_t)(bq * d) * sizeof(float));
        float *m = (float *)aligned_alloc(64, row_bytes);
        float *l = (float *)aligned_alloc(64, row_bytes);
        float *alpha = (float *)aligned_alloc(64, row_bytes);
        uint16_t *pbuf = (uint16_t *)aligned_alloc(64, (size_t)bq * BK * sizeof(uint16_t));
        if (!acc || !m || !l || !alpha || !pbuf) {
#pragma omp atomic write
            err = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < rows; t++) {
            if (err) continue;
            const int64_t row = order[t];
            const int64_t h = row / nq, qb = row % nq;
            const uint8_t *qrow0 = q_u8 + (h * nq + qb) * bq * d;
            const float qs = q_scale[h * nq + qb];
            const int64_t real = n_q_valid - qb * bq < bq ? n_q_valid - qb * bq : bq;
            memset(acc, 0, (size_t)(bq * d) * sizeof(float));
            for (int64_t i = 0; i < bq; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
            for (int64_t e = row_ptr[row]; e < row_ptr[row + 1]; e++) {
                const int64_t kb = cols[e];
                const int8_t *kp = k_pack + ((h * nk + kb) * dq) * BK * 4;
                const int32_t *kc = k_corr + (h * nk + kb) * BK;
                const uint16_t *vp = v_pack + (h * nk + kb) * (int64_t)(BK / 2) * d * 2;
                const __m512 sc = _mm512_set1_ps(qs * k_scale[h * nk + kb]);
                const int last = kb == nk - 1;
                const __mmask16 lim[4] = {
                    last ? (__mmask16)((tail >= 16) ? 0xFFFF : ((1u << tail) - 1)) : 0xFFFF,
                    last ? (__mmask16)((tail >= 32) ? 0xFFFF : (tail <= 16 ? 0 : ((1u << (tail - 16)) - 1))) : 0xFFFF,
                    last ? (__mmask16)((tail >= 48) ? 0xFFFF : (tail <= 32 ? 0 : ((1u << (tail - 32)) - 1))) : 0xFFFF,
                    last ? (__mmask16)((tail >= 64) ? 0xFFFF : (tail <= 48 ? 0 : ((1u << (tail - 48)) - 1))) : 0xFFFF};
                float gap = -INFINITY;
                for (int64_t r0 = 0; r0 < bq; r0 += RG) {
                    const int n_real = (int)(real - r0 < 0 ? 0 : (real - r0 > RG ? RG : real - r0));
                    const float g = qk_softmax_group(qrow0 + r0 * d, kp, kc, sc, lim, d, m + r0,
                                                     l + r0, pbuf + r0 * BK, alpha + r0, n_real);
                    if (g > gap) gap = g;
                    /* without λ, P.V right away, while the group's P is in L1 */
                    if (!lam) pv_group(acc + r0 * d, pbuf + r0 * BK, alpha + r0, vp, d);
                }
                if (!lam) continue;
                if (gap >= lam[h]) {
                    for (int64_t r0 = 0; r0 < bq; r0 += RG)
                        pv_group(acc + r0 * d, pbuf + r0 * BK, alpha + r0, vp, d);
                } else {
                    /* skipped: the accumulators still follow the running maximum */
                    for (int64_t i = 0; i < bq; i++) {
                        if (alpha[i] == 1.0f) continue;
                        const __m512 al = _mm512_set1_ps(alpha[i]);
                        for (int64_t c = 0; c < nd; c++)
                            _mm512_store_ps(acc + i * d + c * 16, _mm512_mul_ps(_mm512_load_ps(acc + i * d + c * 16), al));
                    }
                }
            }
            float *orow = out + (h * nq + qb) * bq * d;
            for (int64_t i = 0; i < bq; i++) {
                const __m512 inv = _mm512_set1_ps(1.0f / l[i]);
                for (int64_t c = 0; c < nd; c++)
                    _mm512_storeu_ps(orow + i * d + c * 16, _mm512_mul_ps(_mm512_load_ps(acc + i * d + c * 16), inv));
                if (lse) lse[(h * nq + qb) * bq + i] = (m[i] + log2f(l[i])) * 0.69314718f;
            }
        }
        free(acc);
        free(m);
        free(l);
        free(alpha);
        free(pbuf);
    }
    return err;
}
