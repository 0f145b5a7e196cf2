// Softmax attention in bf16 on CPUs with AVX512-BF16, for `--precision bf16` (bf16_attention.py builds
// and calls it; docs/PRECISION.md says why: PyTorch's fused CPU kernel gains little in bf16 there).
//
// q.k and p.v are vdpbf16ps dot products (bf16 pairs in, float32 accumulation); the softmax is float32
// (max-subtracted, a degree-5 polynomial exp, its probabilities rounded to bf16 for p.v, the division
// by their float32 sum after p.v). No mask, scale 1 (ESM-2 scales q before). For S sequences of one
// length L laid end to end as rows (S*L, H, D) (H heads of size D, even, <= 64), q, k and v as the
// caller has them (float32 or bf16, rounded here as torch rounds): each (sequence, head) packs its
// keys and values in bf16 into its thread's buffers (no packing passes in Python), and the result
// goes straight into the caller's float32 rows.
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

// Rows of q, k or v as the caller has them: (S*L, H, D) with any row stride, float32 or bf16.
struct Rows {
    const char* data;
    bool bf16;
    int64_t row_stride;  // elements
    // The bf16 pair of features (2p, 2p+1) of head h at row i, rounded to nearest even as torch's .to(bfloat16).
    inline uint32_t pair(int64_t i, int64_t h, int64_t D, int64_t p) const {
        const int64_t at = i * row_stride + h * D + 2 * p;
        if (bf16) {
            const uint16_t* x = (const uint16_t*)data + at;
            return (uint32_t)x[0] | ((uint32_t)x[1] << 16);
        }
        const float* x = (const float*)data + at;
        return (uint32_t)round_bf16(x[0]) | ((uint32_t)round_bf16(x[1]) << 16);
    }
    inline uint16_t value(int64_t i, int64_t h, int64_t D, int64_t d) const {
        const int64_t at = i * row_stride + h * D + d;
        return bf16 ? ((const uint16_t*)data)[at] : round_bf16(((const float*)data)[at]);
    }
    static inline uint16_t round_bf16(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
        return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
};

Rows rows_of(const torch::Tensor& t) {
    TORCH_CHECK(t.dim() == 3 && t.stride(2) == 1 && t.stride(1) == t.size(2), "q, k, v: (rows, heads, head_dim), each row's heads contiguous");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16, "q, k, v: float32 or bf16");
    return Rows{(const char*)t.data_ptr(), t.scalar_type() == torch::kBFloat16, t.stride(0)};
}

// Scores of NC chunks of 16 keys from chunk c on, for kRows query rows (NC * kRows independent
// sums, so that the dot products' latency overlaps), padded keys set to -inf, each row's running
// maximum kept in top_lanes.
template <int NC>
inline void score_chunks(const uint32_t* keys, const uint32_t* queries, int64_t pairs, int64_t c, int64_t chunks, int64_t L, int64_t Lp,
                         float* scores, __m512* top_lanes) {
    __m512 acc[NC][kRows];
    for (int n = 0; n < NC; ++n)
        for (int r = 0; r < kRows; ++r) acc[n][r] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
        for (int n = 0; n < NC; ++n) {
            const __m512i kp = _mm512_loadu_si512(keys + ((c + n) * pairs + p) * 16);
            for (int r = 0; r < kRows; ++r) acc[n][r] = _mm512_dpbf16_ps(acc[n][r], as_bh(kp), as_bh(_mm512_set1_epi32((int)queries[r * pairs + p])));
        }
    }
    for (int n = 0; n < NC; ++n) {
        const __mmask16 real = c + n + 1 < chunks || L % 16 == 0 ? (__mmask16)0xffff : (__mmask16)((1u << (L % 16)) - 1);
        for (int r = 0; r < kRows; ++r) {
            const __m512 sc = _mm512_mask_blend_ps(real, _mm512_set1_ps(-INFINITY), acc[n][r]);  // padded keys score -inf
            top_lanes[r] = _mm512_max_ps(top_lanes[r], sc);
            _mm512_storeu_ps(scores + r * Lp + (c + n) * 16, sc);
        }
    }
}

// One task per (sequence, head): pack its keys and values into this thread's buffers, then every
// block of kRows queries against them.
//   keys:   (Lp/16, D/2, 16) pairs: 16 consecutive keys' feature pair p side by side (one register);
//   values: (Lp/2, DV*16) pairs: two consecutive keys' value of one feature (features padded to 16).
template <int DV>
void attend(const Rows& Q, const Rows& K, const Rows& V, float* out, int64_t S, int64_t H, int64_t L, int64_t D) {
    const int64_t Lp = (L + 15) / 16 * 16, pairs = D / 2;
    at::parallel_for(0, S * H, 1, [&](int64_t first, int64_t last) {
        std::vector<uint32_t> keys(Lp / 16 * pairs * 16), values(Lp / 2 * DV * 16), queries(kRows * pairs);
        std::vector<float> scores(kRows * Lp);
        std::vector<uint16_t> probs(kRows * Lp);
        for (int64_t sh = first; sh < last; ++sh) {
            const int64_t s = sh / H, h = sh % H, row0 = s * L;
            std::fill(keys.begin(), keys.end(), 0u);
            for (int64_t j = 0; j < L; ++j)
                for (int64_t p = 0; p < pairs; ++p) keys[((j / 16) * pairs + p) * 16 + j % 16] = K.pair(row0 + j, h, D, p);
            std::fill(values.begin(), values.end(), 0u);
            uint16_t* values16 = (uint16_t*)values.data();
            for (int64_t j = 0; j < L; ++j)
                for (int64_t d = 0; d < D; ++d) values16[((j / 2) * DV * 16 + d) * 2 + j % 2] = V.value(row0 + j, h, D, d);
            for (int64_t i0 = 0; i0 < L; i0 += kRows) {
                const int rows = (int)std::min<int64_t>(kRows, L - i0);
                for (int r = 0; r < kRows; ++r)  // spare rows repeat the last
                    for (int64_t p = 0; p < pairs; ++p) queries[r * pairs + p] = Q.pair(row0 + i0 + std::min(r, rows - 1), h, D, p);
                __m512 top_lanes[kRows];
                for (int r = 0; r < kRows; ++r) top_lanes[r] = _mm512_set1_ps(-INFINITY);
                const int64_t chunks = Lp / 16;
                int64_t c = 0;
                for (; c + 1 < chunks; c += 2) score_chunks<2>(keys.data(), queries.data(), pairs, c, chunks, L, Lp, scores.data(), top_lanes);
                if (c < chunks) score_chunks<1>(keys.data(), queries.data(), pairs, c, chunks, L, Lp, scores.data(), top_lanes);
                float inverse_sum[kRows];
                for (int r = 0; r < kRows; ++r) {
                    float* sc = &scores[r * Lp];
                    if (r >= rows) { std::memset(&probs[r * Lp], 0, Lp * sizeof(uint16_t)); inverse_sum[r] = 0; continue; }
                    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(top_lanes[r]));
                    __m512 sum = _mm512_setzero_ps();
                    for (int64_t j = 0; j < Lp; j += 16) {
                        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sc + j), top));
                        sum = _mm512_add_ps(sum, e);
                        _mm256_storeu_si256((__m256i*)&probs[r * Lp + j], (__m256i)_mm512_cvtneps_pbh(e));
                    }
                    inverse_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
                }
                const uint32_t* p32 = (const uint32_t*)probs.data();
                // kPartials independent sums per output register, so that the dot products' latency
                // overlaps (one chain per (row, register) would wait on each vdpbf16ps in turn).
                constexpr int kPartials = DV == 1 ? 4 : DV == 2 ? 2 : 1;
                __m512 o[kRows][DV][kPartials];
                for (int r = 0; r < kRows; ++r)
                    for (int d = 0; d < DV; ++d)
                        for (int u = 0; u < kPartials; ++u) o[r][d][u] = _mm512_setzero_ps();
                for (int64_t t = 0; t < Lp / 2; t += kPartials) {  // two keys' probabilities per bf16 pair; Lp / 2 is a multiple of 8
                    for (int u = 0; u < kPartials; ++u) {
                        __m512i vt[DV];
                        for (int d = 0; d < DV; ++d) vt[d] = _mm512_loadu_si512(values.data() + ((t + u) * DV + d) * 16);
                        for (int r = 0; r < kRows; ++r) {
                            const __m512bh pr = as_bh(_mm512_set1_epi32((int)p32[r * (Lp / 2) + t + u]));
                            for (int d = 0; d < DV; ++d) o[r][d][u] = _mm512_dpbf16_ps(o[r][d][u], as_bh(vt[d]), pr);
                        }
                    }
                }
                for (int r = 0; r < kRows; ++r)
                    for (int d = 0; d < DV; ++d)
                        for (int u = 1; u < kPartials; ++u) o[r][d][0] = _mm512_add_ps(o[r][d][0], o[r][d][u]);
                float row[DV * 16];
                for (int r = 0; r < rows; ++r) {
                    for (int d = 0; d < DV; ++d) _mm512_storeu_ps(row + d * 16, _mm512_mul_ps(o[r][d][0], _mm512_set1_ps(inverse_sum[r])));
                    std::memcpy(out + ((row0 + i0 + r) * H + h) * D, row, D * sizeof(float));
                }
            }
        }
    });
}

}  // namespace

// q, k, v: (S*L, H, D) rows, float32 or bf16, each row's heads contiguous (any row stride); out:
// contiguous float32 of the same shape, written in place.
void attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor out, int64_t sequences) {
    const Rows Q = rows_of(q), K = rows_of(k), V = rows_of(v);
    const int64_t N = q.size(0), H = q.size(1), D = q.size(2);
    TORCH_CHECK(sequences > 0 && N % sequences == 0 && N > 0, "rows: sequences of one length");
    TORCH_CHECK(D % 2 == 0 && D <= 64, "head size: even, at most 64");
    TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes() && out.sizes() == q.sizes(), "q, k, v and out: one shape");
    TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.is_contiguous(), "out: contiguous float32");
    const int64_t L = N / sequences, DV = (D + 15) / 16;
    float* o = out.data_ptr<float>();
    switch (DV) {
        case 1: attend<1>(Q, K, V, o, sequences, H, L, D); break;
        case 2: attend<2>(Q, K, V, o, sequences, H, L, D); break;
        case 3: attend<3>(Q, K, V, o, sequences, H, L, D); break;
        default: attend<4>(Q, K, V, o, sequences, H, L, D); break;
    }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("attention", &attention, "bf16 softmax attention of equal-length sequences, into out (see the file header)"); }
