// LoRA on the device, in the manner of Punica's BGMV kernels: each row (or
// (row, expert) pair) finds its adapter through its row's slot and applies
// that adapter's factors. Shrink: t = scale · A x (one warp per rank
// component); expand: y += B t (one thread per output feature). Rows of the
// base model (slot -1), and experts an adapter leaves alone, are skipped.
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

// Item i's entry, or null: its row's slot, the slot's table, the item's expert.
__device__ __forceinline__ const LoraEntry* EntryOf(const LoraEntry* const* tables, int64_t base, int i,
                                                    const int32_t* slot_row, const int32_t* item_expert,
                                                    const int32_t* row_adapter) {
  const int row = slot_row ? slot_row[i] : i;
  const int slot = row_adapter[row];
  if (slot < 0) return nullptr;
  const LoraEntry* table = tables[slot];
  const int e = item_expert ? item_expert[i] : 0;
  if (!table || e < 0) return nullptr;
  const LoraEntry* en = table + base + e;
  return en->a ? en : nullptr;
}

// One block per item; warp w computes components w, w + warps, ... of t[i].
__global__ void LoraShrinkKernel(const LoraEntry* const* tables, int64_t base, const float* x, int64_t ldx, int64_t in,
                                 const int32_t* x_row, const int32_t* slot_row, const int32_t* item_expert,
                                 const int32_t* row_adapter, float* t, int64_t ldt) {
  const int i = blockIdx.x;
  const LoraEntry* en = EntryOf(tables, base, i, slot_row, item_expert, row_adapter);
  const int rank = en ? en->rank : 0;
  const float* xr = x + static_cast<int64_t>(x_row ? x_row[i] : i) * ldx;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int k = warp; k < ldt; k += warps) {
    float acc = 0.0f;
    if (k < rank) {
      const float* a = en->a + static_cast<int64_t>(k) * in;
      for (int64_t c = lane; c < in; c += 32) acc += a[c] * xr[c];
    }
    acc = WarpSum(acc);
    if (lane == 0) t[static_cast<int64_t>(i) * ldt + k] = k < rank ? acc * en->scale : 0.0f;
  }
}

// Grid (feature blocks, items): y[i, o] += sum_k B[o, k] t[i, k].
__global__ void LoraExpandKernel(const LoraEntry* const* tables, int64_t base, const float* t, int64_t ldt,
                                 const int32_t* slot_row, const int32_t* item_expert, const int32_t* row_adapter,
                                 float* y, int64_t ldy, int64_t out) {
  const int i = blockIdx.y;
  const LoraEntry* en = EntryOf(tables, base, i, slot_row, item_expert, row_adapter);
  if (!en) return;
  const int rank = en->rank;
  const float* ti = t + static_cast<int64_t>(i) * ldt;
  for (int64_t o = blockIdx.x * blockDim.x + threadIdx.x; o < out; o += gridDim.x * blockDim.x) {
    const float* b = en->b + o * rank;
    float acc = 0.0f;
    for (int k = 0; k < rank; ++k) acc += b[k] * ti[k];
    y[static_cast<int64_t>(i) * ldy + o] += acc;
  }
}

}  // namespace

void LoraApply(const LoraEntry* const* tables, int64_t entry_base, const float* x, int64_t ldx, int64_t in,
               const int32_t* x_row, const int32_t* slot_row, const int32_t* item_expert, const int32_t* row_adapter,
               int items, float* t, int64_t max_rank, float* y, int64_t ldy, int64_t out, cudaStream_t stream) {
  if (items == 0 || max_rank == 0) return;
  Launch(LoraShrinkKernel, items, 128, 0, stream, tables, entry_base, x, ldx, in, x_row, slot_row, item_expert,
         row_adapter, t, max_rank);
  Launch(LoraExpandKernel, dim3(CeilDiv(out, 256), items), 256, 0, stream, tables, entry_base,
         static_cast<const float*>(t), max_rank, slot_row, item_expert, row_adapter, y, ldy, out);
}

}  // namespace moeserve::cuda
