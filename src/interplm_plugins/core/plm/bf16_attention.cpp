// Softmax attention in bf16 on CPUs with AVX512-BF16, for `--precision bf16` (bf16_attention.py builds
// and calls it; docs/PRECISION.md says why: PyTorch's fused CPU kernel gains little in bf16 there).
//
// q.k and p.v are vdpbf16ps dot products (bf16 pairs in, float32 accumulation); the softmax is float32
// (max-subtracted, a degree-5 polynomial exp, its probabilities rounded to bf16 for p.v, the division
// by their float32 sum after p.v). No mask, scale 1 (ESM-2 scales q before). Inputs are packed in bf16
// by bf16_attention.py, for S sequences of one length L with H heads of size D (even, <= 64):
//   Q (S*H, L, D/2) pairs, K (S*H, Lp/16, D/2, 16) pairs, V (S*H, Lp/2, DV*16) pairs,
// Lp = L rounded up to 16 (padded keys score -inf, padded values are 0), DV = ceil(D / 16).
// Output: (S, L, H, D) float32, the rows layout the caller's q came in.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// Query rows that share each key and value load (8 measured no faster than 4 on Zen 4).
constexpr int kRows = 4;

// e^x for x <= 0 (max-subtracted scores): 2^(x log2 e), split into integer and fraction.
inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);  // 2^f on [-0.5, 0.5], degree 5
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

template <int DV>
void attend(const uint32_t* Q, const uint32_t* K, const uint32_t* V, float* out, int64_t S, int64_t H, int64_t L, int64_t D) {
    const int64_t Lp = (L + 15) / 16 * 16, pairs = D / 2;
    const int64_t blocks = (L + kRows - 1) / kRows;
    at::parallel_for(0, S * H * blocks, 1, [&](int64_t first, int64_t last) {
        std::vector<float> scores(kRows * Lp);
        std::vector<uint16_t> probs(kRows * Lp);
        for (int64_t task = first; task < last; ++task) {
            const int64_t sh = task / blocks, i0 = (task % blocks) * kRows;
            const int rows = (int)std::min<int64_t>(kRows, L - i0);
            const uint32_t* q[kRows];
            for (int r = 0; r < kRows; ++r) q[r] = Q + (sh * L + i0 + std::min(r, rows - 1)) * pairs;  // spare rows repeat the last
            const uint32_t* k = K + sh * (Lp / 16) * pairs * 16;
            for (int64_t c = 0; c < Lp / 16; ++c) {  // scores of 16 keys at a time
                __m512 acc[kRows];
                for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
                const uint32_t* kc = k + c * pairs * 16;
                for (int64_t p = 0; p < pairs; ++p) {
                    const __m512i kp = _mm512_loadu_si512(kc + p * 16);
                    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], as_bh(kp), as_bh(_mm512_set1_epi32((int)q[r][p])));
                }
                for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(&scores[r * Lp + c * 16], acc[r]);
            }
            float inverse_sum[kRows];
            for (int r = 0; r < kRows; ++r) {
                float* s = &scores[r * Lp];
                if (r >= rows) { std::memset(&probs[r * Lp], 0, Lp * sizeof(uint16_t)); inverse_sum[r] = 0; continue; }
                for (int64_t j = L; j < Lp; ++j) s[j] = -INFINITY;
                __m512 m = _mm512_set1_ps(-INFINITY);
                for (int64_t j = 0; j < Lp; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
                const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(m));
                __m512 sum = _mm512_setzero_ps();
                for (int64_t j = 0; j < Lp; j += 16) {
                    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), top));
                    sum = _mm512_add_ps(sum, e);
                    _mm256_storeu_si256((__m256i*)&probs[r * Lp + j], (__m256i)_mm512_cvtneps_pbh(e));
                }
                inverse_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
            }
            const uint32_t* v = V + sh * (Lp / 2) * DV * 16;
            const uint32_t* p32 = (const uint32_t*)probs.data();
            __m512 o[kRows][DV];
            for (int r = 0; r < kRows; ++r)
                for (int d = 0; d < DV; ++d) o[r][d] = _mm512_setzero_ps();
            for (int64_t t = 0; t < Lp / 2; ++t) {  // two keys' probabilities per bf16 pair
                __m512i vt[DV];
                for (int d = 0; d < DV; ++d) vt[d] = _mm512_loadu_si512(v + (t * DV + d) * 16);
                for (int r = 0; r < kRows; ++r) {
                    const __m512bh pr = as_bh(_mm512_set1_epi32((int)p32[r * (Lp / 2) + t]));
                    for (int d = 0; d < DV; ++d) o[r][d] = _mm512_dpbf16_ps(o[r][d], as_bh(vt[d]), pr);
                }
            }
            const int64_t s_index = sh / H, h = sh % H;
            float row[DV * 16];
            for (int r = 0; r < rows; ++r) {
                for (int d = 0; d < DV; ++d) _mm512_storeu_ps(row + d * 16, _mm512_mul_ps(o[r][d], _mm512_set1_ps(inverse_sum[r])));
                std::memcpy(out + ((s_index * L + i0 + r) * H + h) * D, row, D * sizeof(float));
            }
        }
    });
}

}  // namespace

torch::Tensor attention(torch::Tensor Q, torch::Tensor K, torch::Tensor V, int64_t sequences, int64_t heads) {
    TORCH_CHECK(Q.dim() == 3 && Q.scalar_type() == torch::kBFloat16 && Q.is_contiguous(), "Q: contiguous (S*H, L, D) bf16");
    TORCH_CHECK(K.scalar_type() == torch::kBFloat16 && K.is_contiguous() && V.scalar_type() == torch::kBFloat16 && V.is_contiguous(), "K, V: contiguous bf16");
    const int64_t L = Q.size(1), D = Q.size(2), Lp = (L + 15) / 16 * 16, DV = (D + 15) / 16;
    TORCH_CHECK(Q.size(0) == sequences * heads && D % 2 == 0 && D <= 64 && L > 0, "Q shape");
    TORCH_CHECK(K.numel() == sequences * heads * Lp * D && V.numel() == sequences * heads * Lp * DV * 16, "K or V packed for another shape");
    auto out = torch::empty({sequences, L, heads, D}, torch::kFloat32);
    const auto q = (const uint32_t*)Q.data_ptr(), k = (const uint32_t*)K.data_ptr(), v = (const uint32_t*)V.data_ptr();
    float* o = out.data_ptr<float>();
    switch (DV) {
        case 1: attend<1>(q, k, v, o, sequences, heads, L, D); break;
        case 2: attend<2>(q, k, v, o, sequences, heads, L, D); break;
        case 3: attend<3>(q, k, v, o, sequences, heads, L, D); break;
        default: attend<4>(q, k, v, o, sequences, heads, L, D); break;
    }
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("attention", &attention, "bf16 softmax attention of equal-length sequences (see the file header)"); }
