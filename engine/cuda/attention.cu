// The paged KV cache on the device: writing new K/V rows, and attention with
// per-head sinks, the sliding window and grouped query heads (spec §2.4).
//
// PagedAttention: one block per (query row, KV head), one warp per query head
// of the group; each warp walks the row's keys once with an online softmax
// that starts from the sink (max = sink, sum = 1, no value), so the sink takes
// its share of the probability exactly as in the CPU kernel. Lanes hold
// ceil(head_dim / 32) dimensions each. Correctness first: a split-K decode kernel
// for long contexts and a tensor-core prefill kernel come next.
#include "absl/strings/str_cat.h"
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"
#include "engine/kv_layout.h"

namespace moeserve::cuda {
namespace {

constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

template <bool kBf16>
__device__ __forceinline__ float KvLoad(const void* row, int64_t i) {
  if constexpr (kBf16) return Bf16ToF32(static_cast<const uint16_t*>(row)[i]);
  else return static_cast<const float*>(row)[i];
}

template <bool kBf16>
__device__ __forceinline__ void KvStore(void* row, int64_t i, float v) {
  if constexpr (kBf16) static_cast<uint16_t*>(row)[i] = F32ToBf16(v);
  else static_cast<float*>(row)[i] = v;
}

// The K (value = 0) or V (value = 1) row of a cache slot (engine/kv_layout.h).
__device__ __forceinline__ char* KvRow(const KvLayer& kv, int64_t slot, int value) {
  const int64_t row_bytes = static_cast<int64_t>(kv.kv_heads) * kv.head_dim * (kv.bf16 ? 2 : 4);
  return static_cast<char*>(kv.base) + KvRowOffset(slot, value, kv.block_size, row_bytes);
}

template <bool kBf16>
__global__ void KvWriteKernel(KvLayer kv, const float* k, int64_t ldk, const float* v, int64_t ldv,
                              const int64_t* slot) {
  const int r = blockIdx.x;
  if (slot[r] < 0) return;
  char* krow = KvRow(kv, slot[r], 0);
  char* vrow = KvRow(kv, slot[r], 1);
  const int64_t n = static_cast<int64_t>(kv.kv_heads) * kv.head_dim;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    KvStore<kBf16>(krow, i, k[r * ldk + i]);
    KvStore<kBf16>(vrow, i, v[r * ldv + i]);
  }
}

template <bool kBf16>
__global__ void AttentionKernel(KvLayer kv, const float* q, int64_t ldq, int num_heads, const int64_t* pos,
                                const int32_t* tables, const int64_t* table_offset, int64_t window,
                                const float* sinks, float scale, float* out, int64_t ldo) {
  const int r = blockIdx.x, g = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int group = num_heads / kv.kv_heads;
  const int h = g * group + (threadIdx.x >> 5);
  const int hd = kv.head_dim, per = (hd + 31) / 32;
  const int64_t p = pos[r];
  const int64_t first = window > 0 ? max(static_cast<int64_t>(0), p - window + 1) : 0;
  const int32_t* table = tables + table_offset[r];
  const int64_t head_off = static_cast<int64_t>(g) * hd;

  float qv[kMaxDimsPerLane], acc[kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    qv[i] = (i < per && lane + 32 * i < hd) ? q[r * ldq + static_cast<int64_t>(h) * hd + lane + 32 * i] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = sinks[h], l = 1.0f;  // the sink: exp(sink - m) = 1, no value
  for (int64_t j = first; j <= p; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / kv.block_size]) * kv.block_size + j % kv.block_size;
    const char* krow = KvRow(kv, slot, 0);
    const char* vrow = KvRow(kv, slot, 1);
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < per && lane + 32 * i < hd) dot += qv[i] * KvLoad<kBf16>(krow, head_off + lane + 32 * i);
    }
    const float s = WarpSum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < per && lane + 32 * i < hd) acc[i] = acc[i] * corr + e * KvLoad<kBf16>(vrow, head_off + lane + 32 * i);
    }
    m = m_new;
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    if (i < per && lane + 32 * i < hd) out[r * ldo + static_cast<int64_t>(h) * hd + lane + 32 * i] = acc[i] * inv;
  }
}

}  // namespace

void KvWrite(KvLayer kv, const float* k, int64_t ldk, const float* v, int64_t ldv, const int64_t* slot, int rows,
             cudaStream_t stream) {
  if (rows == 0) return;
  if (kv.bf16) Launch(KvWriteKernel<true>, rows, 256, 0, stream, kv, k, ldk, v, ldv, slot);
  else Launch(KvWriteKernel<false>, rows, 256, 0, stream, kv, k, ldk, v, ldv, slot);
}

absl::Status PagedAttention(KvLayer kv, const float* q, int64_t ldq, int rows, int num_heads, const int64_t* pos,
                    const int32_t* tables, const int64_t* table_offset, int64_t window, const float* sinks,
                    float scale, float* out, int64_t ldo, cudaStream_t stream) {
  // head_dim up to 256; at most 32 query heads per KV head (one warp each).
  const int group = kv.kv_heads > 0 ? num_heads / kv.kv_heads : 0;
  if (kv.head_dim < 1 || kv.head_dim > 32 * kMaxDimsPerLane || group < 1 || group > 32 ||
      group * kv.kv_heads != num_heads) {
    return absl::InvalidArgumentError(absl::StrCat("PagedAttention: unsupported head_dim ", kv.head_dim, " with ",
                                                   num_heads, " query heads over ", kv.kv_heads, " KV heads"));
  }
  if (rows == 0) return absl::OkStatus();
  const dim3 grid(rows, kv.kv_heads);
  if (kv.bf16) {
    Launch(AttentionKernel<true>, grid, group * 32, 0, stream, kv, q, ldq, num_heads, pos, tables, table_offset, window,
                                                           sinks, scale, out, ldo);
  } else {
    Launch(AttentionKernel<false>, grid, group * 32, 0, stream, kv, q, ldq, num_heads, pos, tables, table_offset,
                                                            window, sinks, scale, out, ldo);
  }
  return absl::OkStatus();
}

}  // namespace moeserve::cuda
