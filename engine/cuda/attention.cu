// The paged KV cache on the device: writing new K/V rows, and attention with
// per-head sinks, the sliding window and grouped query heads (spec §2.4).
//
// PagedAttention: one block per (query row, KV head), one warp per query head
// of the group; each warp walks the row's keys once with an online softmax
// that starts from the sink (max = sink, sum = 1, no value), so the sink takes
// its share of the probability exactly as in the CPU kernel. Lanes hold
// ceil(head_dim / 32) dimensions each. K/V rows are bf16, f32 or fp8 E4M3
// (engine/fp8.h, scale 1), chosen at compile time per kernel. Correctness first: a split-K decode kernel
// for long contexts and a tensor-core prefill kernel come next.
#include "absl/strings/str_cat.h"
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"
#include "engine/fp8.h"
#include "engine/kv_layout.h"

namespace moeserve::cuda {
namespace {

constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

template <KvDtype kDtype>
__device__ __forceinline__ float KvLoad(const void* row, int64_t i) {
  if constexpr (kDtype == KvDtype::kBf16) return Bf16ToF32(static_cast<const uint16_t*>(row)[i]);
  else if constexpr (kDtype == KvDtype::kFp8) return E4m3ToF32(static_cast<const uint8_t*>(row)[i]);
  else return static_cast<const float*>(row)[i];
}

template <KvDtype kDtype>
__device__ __forceinline__ void KvStore(void* row, int64_t i, float v) {
  if constexpr (kDtype == KvDtype::kBf16) static_cast<uint16_t*>(row)[i] = F32ToBf16(v);
  else if constexpr (kDtype == KvDtype::kFp8) static_cast<uint8_t*>(row)[i] = F32ToE4m3(v);
  else static_cast<float*>(row)[i] = v;
}

// The K (value = 0) or V (value = 1) row of a cache slot (engine/kv_layout.h).
__device__ __forceinline__ char* KvRow(const KvLayer& kv, int64_t slot, int value) {
  const int elt = kv.dtype == KvDtype::kF32 ? 4 : kv.dtype == KvDtype::kBf16 ? 2 : 1;  // KvDtypeBytes, on the device
  const int64_t row_bytes = static_cast<int64_t>(kv.kv_heads) * kv.head_dim * elt;
  return static_cast<char*>(kv.base) + KvRowOffset(slot, value, kv.block_size, row_bytes);
}

template <KvDtype kDtype>
__global__ void KvWriteKernel(KvLayer kv, const float* k, int64_t ldk, const float* v, int64_t ldv,
                              const int64_t* slot) {
  const int r = blockIdx.x;
  if (slot[r] < 0) return;
  char* krow = KvRow(kv, slot[r], 0);
  char* vrow = KvRow(kv, slot[r], 1);
  const int64_t n = static_cast<int64_t>(kv.kv_heads) * kv.head_dim;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    KvStore<kDtype>(krow, i, k[r * ldk + i]);
    KvStore<kDtype>(vrow, i, v[r * ldv + i]);
  }
}

template <KvDtype kDtype>
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
      if (i < per && lane + 32 * i < hd) dot += qv[i] * KvLoad<kDtype>(krow, head_off + lane + 32 * i);
    }
    const float s = WarpSum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      if (i < per && lane + 32 * i < hd) acc[i] = acc[i] * corr + e * KvLoad<kDtype>(vrow, head_off + lane + 32 * i);
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
  switch (kv.dtype) {
    case KvDtype::kBf16: Launch(KvWriteKernel<KvDtype::kBf16>, rows, 256, 0, stream, kv, k, ldk, v, ldv, slot); break;
    case KvDtype::kF32: Launch(KvWriteKernel<KvDtype::kF32>, rows, 256, 0, stream, kv, k, ldk, v, ldv, slot); break;
    case KvDtype::kFp8: Launch(KvWriteKernel<KvDtype::kFp8>, rows, 256, 0, stream, kv, k, ldk, v, ldv, slot); break;
  }
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
  auto launch = [&](auto kernel) {
    Launch(kernel, grid, group * 32, 0, stream, kv, q, ldq, num_heads, pos, tables, table_offset, window, sinks, scale,
           out, ldo);
  };
  switch (kv.dtype) {
    case KvDtype::kBf16: launch(AttentionKernel<KvDtype::kBf16>); break;
    case KvDtype::kF32: launch(AttentionKernel<KvDtype::kF32>); break;
    case KvDtype::kFp8: launch(AttentionKernel<KvDtype::kFp8>); break;
  }
  return absl::OkStatus();
}

}  // namespace moeserve::cuda
