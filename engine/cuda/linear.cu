// Dense BF16 projections: y = W x + b with f32 activations and accumulation.
//
// A warp computes one output row for up to kTokens tokens, streaming the row
// once (16-byte loads of 8 weights) and keeping one accumulator per token, so
// decode (a few tokens) reads each weight once. Larger batches loop over
// token tiles; a tensor-core GEMM for prefill comes after correctness.
#include "engine/cuda/common.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

constexpr int kTokens = 8;
constexpr int kWarps = 4;  // rows per block

__global__ void LinearBf16Kernel(const uint16_t* w, int64_t rows, int64_t k, const float* bias, const float* x,
                                 int64_t ldx, int num_tokens, float* y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= rows) return;
  const int t0 = blockIdx.y * kTokens;
  const int nt = min(kTokens, num_tokens - t0);
  const uint16_t* wr = w + o * k;
  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;
  for (int64_t c = static_cast<int64_t>(lane) * 8; c < k; c += 32 * 8) {
    const uint4 packed = *reinterpret_cast<const uint4*>(wr + c);
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    float wf[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wf[2 * j] = __uint_as_float(words[j] << 16);
      wf[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      if (t < nt) {
        const float* xt = x + static_cast<int64_t>(t0 + t) * ldx + c;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) s += wf[j] * xt[j];
        acc[t] += s;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    if (t < nt) {
      const float s = WarpSum(acc[t]);
      if (lane == 0) y[static_cast<int64_t>(t0 + t) * ldy + o] = s + (bias ? bias[o] : 0.0f);
    }
  }
}

}  // namespace

void LinearBf16(const uint16_t* w, int64_t rows, int64_t k, const float* bias, const float* x, int64_t ldx,
                int num_tokens, float* y, int64_t ldy, cudaStream_t stream) {
  if (num_tokens == 0 || rows == 0) return;
  const dim3 grid(CeilDiv(rows, kWarps), CeilDiv(num_tokens, kTokens));
  LinearBf16Kernel<<<grid, kWarps * 32, 0, stream>>>(w, rows, k, bias, x, ldx, num_tokens, y, ldy);
}

}  // namespace moeserve::cuda
