// One-off trial, not a product path: softmax attention of one sequence in bf16 with AVX512-BF16
// (vdpbf16ps for q.k and p.v, float32 accumulation, float32 softmax with a degree-5 exp), to
// measure whether a hand-written kernel gains what PyTorch's fused CPU kernel does not
// (docs/PRECISION.md). Built and driven by bf16_attention.py, which packs the inputs:
// Qp (H, L, D), Kp (H, Lp/16, D/2, 16, 2), Vp (H, Lp/2, DV*16, 2), all bf16, Lp = L rounded up to 16.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <vector>
#include <cmath>
#include <cstring>

static inline __m512 fast_exp(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    // 2^f on [-0.5, 0.5], degree 5
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// Packed bf16 inputs (made in Python): Qp (H, L, D) ; Kp (H, Lp/16, D/2, 16, 2) ; Vp (H, Lp/2, DV*16, 2).
// Returns (L, H, D) float32. No mask, scale 1. Keys past L are padding.
template <int R>
void run_blocks(const uint32_t* Qp, const uint32_t* Kp, const uint32_t* Vp, float* outp, int64_t L, int64_t H, int64_t D) {
    const int64_t Lp = (L + 15) / 16 * 16, DP = D / 2, DV = (D + 15) / 16;
    const int64_t blocks = (L + R - 1) / R;
    at::parallel_for(0, H * blocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<float> S(R * Lp);
        std::vector<uint16_t> P(R * Lp);
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t h = b / blocks, i0 = (b % blocks) * R;
            const int rows = (int)std::min<int64_t>(R, L - i0);
            const uint32_t* qrow[R];
            for (int r = 0; r < R; ++r) qrow[r] = Qp + (h * L + i0 + std::min(r, rows - 1)) * DP;
            const uint32_t* kh = Kp + h * (Lp / 16) * DP * 16;
            for (int64_t c = 0; c < Lp / 16; ++c) {
                __m512 acc[R];
                for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
                const uint32_t* kc = kh + c * DP * 16;
                for (int64_t p = 0; p < DP; ++p) {
                    __m512i kz = _mm512_loadu_si512(kc + p * 16);
                    for (int r = 0; r < R; ++r)
                        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)kz, (__m512bh)_mm512_set1_epi32(qrow[r][p]));
                }
                for (int r = 0; r < R; ++r) _mm512_storeu_ps(&S[r * Lp + c * 16], acc[r]);
            }
            float inv[R];
            for (int r = 0; r < R; ++r) {
                float* s = &S[r * Lp];
                if (r >= rows) { std::memset(&P[r * Lp], 0, Lp * 2); inv[r] = 0; continue; }
                for (int64_t j = L; j < Lp; ++j) s[j] = -INFINITY;
                __m512 m = _mm512_set1_ps(-INFINITY);
                for (int64_t j = 0; j < Lp; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
                __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
                __m512 sum = _mm512_setzero_ps();
                for (int64_t j = 0; j < Lp; j += 16) {
                    __m512 e = fast_exp(_mm512_sub_ps(_mm512_loadu_ps(s + j), mx));
                    sum = _mm512_add_ps(sum, e);
                    _mm256_storeu_si256((__m256i*)&P[r * Lp + j], (__m256i)_mm512_cvtneps_pbh(e));
                }
                inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
            }
            const uint32_t* vh = Vp + h * (Lp / 2) * DV * 16;
            const uint32_t* P32 = (const uint32_t*)P.data();
            float tmp[32];  // D <= 32
            if (DV == 1) {
                __m512 o[R];
                for (int r = 0; r < R; ++r) o[r] = _mm512_setzero_ps();
                for (int64_t t = 0; t < Lp / 2; ++t) {
                    __m512i vz = _mm512_loadu_si512(vh + t * 16);
                    for (int r = 0; r < R; ++r)
                        o[r] = _mm512_dpbf16_ps(o[r], (__m512bh)vz, (__m512bh)_mm512_set1_epi32(P32[r * (Lp / 2) + t]));
                }
                for (int r = 0; r < rows; ++r) {
                    _mm512_storeu_ps(tmp, _mm512_mul_ps(o[r], _mm512_set1_ps(inv[r])));
                    std::memcpy(outp + ((i0 + r) * H + h) * D, tmp, D * 4);
                }
            } else {
                __m512 o[R][2];
                for (int r = 0; r < R; ++r) { o[r][0] = _mm512_setzero_ps(); o[r][1] = _mm512_setzero_ps(); }
                for (int64_t t = 0; t < Lp / 2; ++t) {
                    __m512i v0 = _mm512_loadu_si512(vh + t * 32), v1 = _mm512_loadu_si512(vh + t * 32 + 16);
                    for (int r = 0; r < R; ++r) {
                        __m512bh pb = (__m512bh)_mm512_set1_epi32(P32[r * (Lp / 2) + t]);
                        o[r][0] = _mm512_dpbf16_ps(o[r][0], (__m512bh)v0, pb);
                        o[r][1] = _mm512_dpbf16_ps(o[r][1], (__m512bh)v1, pb);
                    }
                }
                for (int r = 0; r < rows; ++r) {
                    _mm512_storeu_ps(tmp, _mm512_mul_ps(o[r][0], _mm512_set1_ps(inv[r])));
                    _mm512_storeu_ps(tmp + 16, _mm512_mul_ps(o[r][1], _mm512_set1_ps(inv[r])));
                    std::memcpy(outp + ((i0 + r) * H + h) * D, tmp, D * 4);
                }
            }
        }
    });
}

torch::Tensor attention_packed(torch::Tensor Qp, torch::Tensor Kp, torch::Tensor Vp, int64_t L) {
    const int64_t H = Qp.size(0), D = Qp.size(2);
    TORCH_CHECK(D % 2 == 0 && D <= 32, "head dim even, <= 32");
    auto out = torch::empty({L, H, D}, torch::kFloat32);
    auto q = (const uint32_t*)Qp.data_ptr(), k = (const uint32_t*)Kp.data_ptr(), v = (const uint32_t*)Vp.data_ptr();
    run_blocks<4>(q, k, v, out.data_ptr<float>(), L, H, D);  // 4 query rows share each key load (8 measured no faster)
    return out;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("attention_packed", &attention_packed); }
