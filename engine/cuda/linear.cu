// Dense BF16 projections: y = W x + b with f32 activations and accumulation.
//
// A warp computes one output row for up to kTokens tokens, streaming the row
// once (16-byte loads of 8 weights) and keeping one accumulator per token, so
// decode (a few tokens) reads each weight once. Larger batches loop over
// token tiles; a tensor-core GEMM for prefill comes after correctness.
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

constexpr int kTokens = 8;
constexpr int kWarps = 4;  // rows per block

// 8 weights from 16 bytes of BF16, or from two 16-byte loads of f32.
__device__ __forceinline__ void Load8(const uint16_t* p, float* wf) {
  const uint4 packed = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    wf[2 * j] = __uint_as_float(words[j] << 16);
    wf[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
  }
}
__device__ __forceinline__ void Load8(const float* p, float* wf) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  wf[0] = a.x, wf[1] = a.y, wf[2] = a.z, wf[3] = a.w, wf[4] = b.x, wf[5] = b.y, wf[6] = b.z, wf[7] = b.w;
}

__device__ __forceinline__ float Widen(uint16_t b) { return Bf16ToF32(b); }
__device__ __forceinline__ float Widen(float f) { return f; }

template <typename W>
__global__ void LinearKernel(const W* w, int64_t rows, int64_t k, const float* bias, const float* x, int64_t ldx,
                             int num_tokens, float* y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= rows) return;
  const int t0 = blockIdx.y * kTokens;
  const int nt = min(kTokens, num_tokens - t0);
  const W* wr = w + o * k;
  float acc[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc[t] = 0.0f;
  for (int64_t c = static_cast<int64_t>(lane) * 8; c + 8 <= k; c += 32 * 8) {
    float wf[8];
    Load8(wr + c, wf);
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
  // The tail of a row whose length is not a multiple of 8 (f32 router rows: k % 4 == 0).
  for (int64_t c = (k / 8) * 8 + lane; c < k; c += 32) {
    const float wv = static_cast<float>(Widen(wr[c]));
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      if (t < nt) acc[t] += wv * x[static_cast<int64_t>(t0 + t) * ldx + c];
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
  Launch(LinearKernel<uint16_t>, grid, kWarps * 32, 0, stream, w, rows, k, bias, x, ldx, num_tokens, y, ldy);
}

void LinearF32(const float* w, int64_t rows, int64_t k, const float* bias, const float* x, int64_t ldx,
               int num_tokens, float* y, int64_t ldy, cudaStream_t stream) {
  if (num_tokens == 0 || rows == 0) return;
  const dim3 grid(CeilDiv(rows, kWarps), CeilDiv(num_tokens, kTokens));
  Launch(LinearKernel<float>, grid, kWarps * 32, 0, stream, w, rows, k, bias, x, ldx, num_tokens, y, ldy);
}

}  // namespace moeserve::cuda
