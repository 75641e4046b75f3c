// Sampling on the device: greedy ids and their logprobs, one block per row.
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void ArgmaxLogprobKernel(const float* logits, int64_t vocab, int32_t* ids, float* logprob) {
  __shared__ float best_v[kThreads];
  __shared__ int best_i[kThreads];
  __shared__ float shared[32];
  const float* row = logits + blockIdx.x * vocab;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    if (row[i] > bv) {  // ascending i within a thread: the first maximum stays
      bv = row[i];
      bi = static_cast<int>(i);
    }
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = best_v[threadIdx.x + s];
      const int oi = best_i[threadIdx.x + s];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  const float m = best_v[0];
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) sum += expf(row[i] - m);
  sum = BlockSum(sum, shared);
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = best_i[0];
    logprob[blockIdx.x] = -logf(sum);  // logits[id] - m = 0
  }
}

// One block per row; each thread one mask word at a time (32 logits).
__global__ void MaskLogitsKernel(float* logits, int64_t vocab, const uint32_t* masks, int64_t words) {
  float* row = logits + blockIdx.x * vocab;
  const uint32_t* m = masks + blockIdx.x * words;
  for (int64_t w = threadIdx.x; w < words; w += kThreads) {
    const uint32_t bits = m[w];
    if (bits == 0xffffffffu) continue;
    for (int b = 0; b < 32; ++b) {
      const int64_t t = w * 32 + b;
      if (t < vocab && !((bits >> b) & 1u)) row[t] = -INFINITY;
    }
  }
}

}  // namespace

void MaskLogits(float* logits, int rows, int64_t vocab, const uint32_t* masks, int64_t words, cudaStream_t stream) {
  if (rows == 0) return;
  Launch(MaskLogitsKernel, rows, kThreads, 0, stream, logits, vocab, masks, words);
}

void ArgmaxLogprob(const float* logits, int rows, int64_t vocab, int32_t* ids, float* logprob, cudaStream_t stream) {
  if (rows == 0) return;
  Launch(ArgmaxLogprobKernel, rows, kThreads, 0, stream, logits, vocab, ids, logprob);
}

}  // namespace moeserve::cuda
