// The MoE block on the device: expert routing (top-k, then softmax) and MXFP4
// expert projections with the weights dequantized in registers.
//
// ExpertMxfp4: one warp per (pair, output row); each lane takes 32-column
// groups (one 16-byte block and its E8M0 scale) and decodes them on the fly,
// so the weights are read once per pair and never written back expanded.
// Pairs are (token, expert) of the routing; the caller sorts them by expert so
// neighbouring warps share a matrix in cache.
#include "absl/strings/str_cat.h"
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

constexpr int kMaxExpertsPerLane = 8;  // num_experts <= 256
constexpr int kWarps = 4;

// One warp per row.
__global__ void TopKSoftmaxKernel(const float* logits, int rows, int num_experts, int k, int32_t* idx,
                                  float* weight) {
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float v[kMaxExpertsPerLane];
  bool taken[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < num_experts ? logits[static_cast<int64_t>(r) * num_experts + e] : -INFINITY;
    taken[i] = e >= num_experts;
  }
  float top[8];
  int top_idx[8];
  for (int s = 0; s < k; ++s) {
    // This lane's best untaken expert (lowest id on ties), then the warp's.
    float best = -INFINITY;
    int best_e = 1 << 30;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i) {
      const int e = lane + 32 * i;
      if (!taken[i] && (v[i] > best || (v[i] == best && e < best_e))) {
        best = v[i];
        best_e = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (ob > best || (ob == best && oe < best_e)) {
        best = ob;
        best_e = oe;
      }
    }
    top[s] = best;
    top_idx[s] = best_e;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i) {
      if (lane + 32 * i == best_e) taken[i] = true;
    }
  }
  if (lane == 0) {
    float sum = 0.0f, e[8];
    for (int s = 0; s < k; ++s) sum += e[s] = expf(top[s] - top[0]);
    for (int s = 0; s < k; ++s) {
      idx[static_cast<int64_t>(r) * k + s] = top_idx[s];
      weight[static_cast<int64_t>(r) * k + s] = e[s] / sum;
    }
  }
}

__global__ void ExpertMxfp4Kernel(const uint8_t* blocks, const uint8_t* scales, const float* bias, int64_t rows_out,
                                  int64_t k, const float* x, int64_t ldx, const int32_t* pair_row,
                                  const int32_t* pair_expert, float* y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= rows_out) return;
  const int p = blockIdx.y;
  const int64_t e = pair_expert[p];
  if (e < 0) {  // a pair computed elsewhere (the host's experts): zeros
    if (lane == 0) y[static_cast<int64_t>(p) * ldy + o] = 0.0f;
    return;
  }
  const int64_t groups = k / 32;
  const uint8_t* brow = blocks + (e * rows_out + o) * groups * 16;
  const uint8_t* srow = scales + (e * rows_out + o) * groups;
  const float* xr = x + static_cast<int64_t>(pair_row[p]) * ldx;
  float acc = 0.0f;
  for (int64_t gi = lane; gi < groups; gi += 32) {
    const uint4 packed = *reinterpret_cast<const uint4*>(brow + gi * 16);
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    const float* xg = xr + gi * 32;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const uint32_t byte = (words[w] >> (8 * b)) & 0xffu;
        const int j = w * 4 + b;  // byte j: columns 2j (low nibble) and 2j + 1 (high nibble)
        s += kFp4[byte & 0xfu] * xg[2 * j] + kFp4[byte >> 4] * xg[2 * j + 1];
      }
    }
    acc += s * E8m0(srow[gi]);
  }
  acc = WarpSum(acc);
  if (lane == 0) y[static_cast<int64_t>(p) * ldy + o] = acc + (bias ? bias[e * rows_out + o] : 0.0f);
}

}  // namespace

absl::Status TopKSoftmax(const float* logits, int rows, int num_experts, int k, int32_t* idx, float* weight,
                         cudaStream_t stream) {
  if (k < 1 || k > 8 || k > num_experts || num_experts > 32 * kMaxExpertsPerLane) {
    return absl::InvalidArgumentError(absl::StrCat("TopKSoftmax: unsupported top-", k, " of ", num_experts,
                                                   " experts"));
  }
  if (rows == 0) return absl::OkStatus();
  Launch(TopKSoftmaxKernel, CeilDiv(rows, 4), 128, 0, stream, logits, rows, num_experts, k, idx, weight);
  return absl::OkStatus();
}

void ExpertMxfp4(const uint8_t* blocks, const uint8_t* scales, const float* bias, int64_t rows_out, int64_t k,
                 const float* x, int64_t ldx, const int32_t* pair_row, const int32_t* pair_expert, int num_pairs,
                 float* y, int64_t ldy, cudaStream_t stream) {
  if (num_pairs == 0 || rows_out == 0) return;
  const dim3 grid(CeilDiv(rows_out, kWarps), num_pairs);
  Launch(ExpertMxfp4Kernel, grid, kWarps * 32, 0, stream, blocks, scales, bias, rows_out, k, x, ldx, pair_row,
                                                       pair_expert, y, ldy);
}

}  // namespace moeserve::cuda
