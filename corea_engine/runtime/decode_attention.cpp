// Decode attention on the CPU over a slot KV cache, bf16 in and out, fp32 inside (AVX-512 + BF16).
//
// One new query per row: the `groups` query heads of KV head h of row b attend over columns
// 0..positions[b] of keys/values[b, h] and nothing else (no padding, no mask). Softmax is online
// (flash-style) over blocks of BLOCK columns: a block's scores stay in L1 while they are
// exponentiated and its value rows are summed, so each key and value row is read from memory once.
// Loaded by decode_attention.py as torch.ops.corea.decode_attention.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace {

constexpr int64_t BLOCK = 64;  // columns per softmax block

// e^x for x <= 0 (scores minus their running max): x = n ln2 + r with |r| <= ln2/2, e^r by a
// degree-6 Taylor polynomial (relative error ~2e-7 there), times 2^n by scalef (0 below ~-104).
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945309f), x);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// 16 bf16 -> 16 fp32 (exact: a bf16 is the top half of an fp32)
inline __m512 load_bf16(const at::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void prefetch(const at::BFloat16* p) {  // one 64-byte line (32 bf16) into L1
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

inline __m512bh load_bf16_pairs(const at::BFloat16* p) {
  return (__m512bh)_mm512_loadu_si512(p);
}

// Lane j of the result: the sum of the 16 lanes of v[j] (a transpose and add in 4 levels).
inline __m512 sum_each(__m512 v[16]) {
  __m512 pairs[8], quads[4], halves[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: partial sums of [a, b, c, d]
    const __m512d x = _mm512_castps_pd(pairs[2 * i]), y = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes 0+1 and 2+3 of two quads
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                       _mm512_shuffle_f32x4(halves[0], halves[1], 0xDD));
}

// Attention of one (row, KV head) for G query heads of D dims: q [G, D] bf16 (row stride
// q_stride), keys/values [columns, D] bf16 (row stride kv_stride), out [G, D] bf16 contiguous.
// G and D are compile-time so the value accumulators (G x D/16 vectors) stay in registers.
template <int G, int D>
void attend_one(const at::BFloat16* q, int64_t q_stride, const at::BFloat16* keys,
                const at::BFloat16* values, int64_t kv_stride, int64_t columns, float scale,
                at::BFloat16* out) {
  constexpr int C = D / 16;  // 16-lane chunks of a head
  alignas(64) float acc[G][D] = {};
  alignas(64) float scores[G][BLOCK];
  float running_max[G], running_sum[G], rescale[G];
  __m512bh query[G][D / 32];
  for (int64_t t = 0; t < std::min(BLOCK, columns); ++t)  // the first block's keys, all at once
    for (int d = 0; d < D; d += 32) prefetch(keys + t * kv_stride + d);
  for (int g = 0; g < G; ++g) {
    running_max[g] = -std::numeric_limits<float>::infinity();
    running_sum[g] = 0.f;
    for (int d = 0; d < D / 32; ++d) query[g][d] = load_bf16_pairs(q + g * q_stride + 32 * d);
  }
  for (int64_t start = 0; start < columns; start += BLOCK) {
    const int64_t n = std::min(BLOCK, columns - start);
    const at::BFloat16* k = keys + start * kv_stride;
    const at::BFloat16* v = values + start * kv_stride;
    // Ask for the next block's keys and this block's values now, so memory streams under the math.
    for (int64_t t = 0; t < n; ++t)
      for (int d = 0; d < D; d += 32) {
        if (start + BLOCK + t < columns) prefetch(k + (BLOCK + t) * kv_stride + d);
        prefetch(v + t * kv_stride + d);
      }
    for (int g = 0; g < G; ++g) {
      // scores of 16 columns at a time: q . k by bf16 pair dot products into fp32 (each
      // product is exact in fp32); columns past n score 0 and are masked below, never read
      for (int64_t t0 = 0; t0 < n; t0 += 16) {
        __m512 dots[16];
        for (int j = 0; j < 16; ++j) {
          dots[j] = _mm512_setzero_ps();
          if (t0 + j < n)
            for (int d = 0; d < D / 32; ++d)
              dots[j] = _mm512_dpbf16_ps(dots[j], query[g][d], load_bf16_pairs(k + (t0 + j) * kv_stride + 32 * d));
        }
        _mm512_store_ps(scores[g] + t0, _mm512_mul_ps(sum_each(dots), _mm512_set1_ps(scale)));
      }
      // online softmax: the block's max, e^(s - max), and the factor for what was summed so far
      __m512 block_max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t t = 0; t < n; t += 16) {
        const __mmask16 live = n - t >= 16 ? 0xFFFF : (__mmask16)((1u << (n - t)) - 1);
        block_max = _mm512_mask_max_ps(block_max, live, block_max, _mm512_load_ps(scores[g] + t));
      }
      const float new_max = std::max(running_max[g], _mm512_reduce_max_ps(block_max));
      rescale[g] = std::exp(running_max[g] - new_max);  // 0 on the first block
      running_max[g] = new_max;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t t = 0; t < n; t += 16) {
        const __mmask16 live = n - t >= 16 ? 0xFFFF : (__mmask16)((1u << (n - t)) - 1);
        const __m512 p = _mm512_maskz_mov_ps(
            live, exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(scores[g] + t), _mm512_set1_ps(new_max))));
        _mm512_store_ps(scores[g] + t, p);
        sum = _mm512_add_ps(sum, p);
      }
      running_sum[g] = running_sum[g] * rescale[g] + _mm512_reduce_add_ps(sum);
    }
    // values: acc = acc * rescale + sum_t p_t v_t; each value row is widened once for all G heads
    __m512 a[G][C];
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < C; ++c) a[g][c] = _mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * c), _mm512_set1_ps(rescale[g]));
    for (int64_t t = 0; t < n; ++t) {
      __m512 row[C];
      for (int c = 0; c < C; ++c) row[c] = load_bf16(v + t * kv_stride + 16 * c);
      for (int g = 0; g < G; ++g) {
        const __m512 p = _mm512_set1_ps(scores[g][t]);
        for (int c = 0; c < C; ++c) a[g][c] = _mm512_fmadd_ps(p, row[c], a[g][c]);
      }
    }
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < C; ++c) _mm512_store_ps(acc[g] + 16 * c, a[g][c]);
  }
  for (int g = 0; g < G; ++g) {
    const __m512 inverse = _mm512_set1_ps(1.f / running_sum[g]);
    for (int c = 0; c < C; ++c) {
      const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(acc[g] + 16 * c), inverse));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + g * D + 16 * c), (__m256i)rounded);
    }
  }
}

using Kernel = void (*)(const at::BFloat16*, int64_t, const at::BFloat16*, const at::BFloat16*, int64_t,
                        int64_t, float, at::BFloat16*);

template <int D>
Kernel kernel_for_dim(int64_t groups) {
  switch (groups) {
    case 1: return attend_one<1, D>;
    case 2: return attend_one<2, D>;
    case 3: return attend_one<3, D>;
    case 4: return attend_one<4, D>;
    case 5: return attend_one<5, D>;
    case 6: return attend_one<6, D>;
    case 7: return attend_one<7, D>;
    case 8: return attend_one<8, D>;
    default: return nullptr;
  }
}

// The instantiations built: 1..8 query heads per KV head, head_dim 64 or 128.
Kernel kernel_for(int64_t groups, int64_t dim) {
  return dim == 64 ? kernel_for_dim<64>(groups) : dim == 128 ? kernel_for_dim<128>(groups) : nullptr;
}

// queries [B, kv_heads, groups, dim]; keys, values [slots >= B, kv_heads, capacity, dim];
// positions [B] int64 (row b reads columns 0..positions[b]) -> [B, kv_heads * groups * dim].
at::Tensor decode_attention(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& positions, double scale) {
  TORCH_CHECK(queries.dim() == 4 && keys.dim() == 4 && values.dim() == 4,
              "decode_attention: queries, keys and values must be 4-d");
  TORCH_CHECK(queries.scalar_type() == at::kBFloat16 && keys.scalar_type() == at::kBFloat16 &&
                  values.scalar_type() == at::kBFloat16,
              "decode_attention: queries, keys and values must be bfloat16");
  TORCH_CHECK(queries.device().is_cpu() && keys.device().is_cpu() && values.device().is_cpu(),
              "decode_attention: CPU tensors only");
  TORCH_CHECK(keys.sizes() == values.sizes() && keys.strides() == values.strides(),
              "decode_attention: keys and values must share shape and strides");
  const int64_t batch = queries.size(0), kv_heads = queries.size(1), groups = queries.size(2),
                dim = queries.size(3);
  TORCH_CHECK(keys.size(0) >= batch && keys.size(1) == kv_heads && keys.size(3) == dim,
              "decode_attention: keys [slots >= B, kv_heads, capacity, head_dim] do not match queries");
  const Kernel kernel = kernel_for(groups, dim);
  TORCH_CHECK(kernel != nullptr, "decode_attention: built for 1..8 query heads per KV head and head_dim 64 or 128, ",
              "not ", groups, " and ", dim);
  TORCH_CHECK(queries.stride(3) == 1 && keys.stride(3) == 1 && keys.stride(2) >= dim,
              "decode_attention: head_dim must be the innermost, contiguous dimension");
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == batch && positions.scalar_type() == at::kLong &&
                  positions.device().is_cpu(),
              "decode_attention: positions must be int64 [B] on the CPU");
  const at::Tensor cpu_positions = positions.contiguous();
  const int64_t* position = cpu_positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(position[b] >= 0 && position[b] < keys.size(2), "decode_attention: position ", position[b],
                " of row ", b, " is outside the cache's ", keys.size(2), " columns");

  at::Tensor out = at::empty({batch, kv_heads * groups * dim}, queries.options());
  const at::BFloat16* q = queries.const_data_ptr<at::BFloat16>();
  const at::BFloat16* k = keys.const_data_ptr<at::BFloat16>();
  const at::BFloat16* v = values.const_data_ptr<at::BFloat16>();
  at::BFloat16* o = out.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / kv_heads, h = i % kv_heads;
      const int64_t offset = b * keys.stride(0) + h * keys.stride(1);
      kernel(q + b * queries.stride(0) + h * queries.stride(1), queries.stride(2), k + offset, v + offset,
             keys.stride(2), position[b] + 1, static_cast<float>(scale), o + (b * kv_heads + h) * groups * dim);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(corea, m) {
  m.def("decode_attention(Tensor queries, Tensor keys, Tensor values, Tensor positions, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(corea, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}
