// Element-wise and row-wise ops: embedding gather, RMSNorm, RoPE, SwiGLU,
// residual adds, the MoE combine, and the CUDA error check.
#include "absl/strings/str_cat.h"
#include "engine/cuda/common.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/ops.h"

namespace moeserve::cuda {
namespace {

__global__ void EmbeddingKernel(const uint16_t* table, const int32_t* ids, int64_t hidden, float* out,
                                int64_t vocab_begin, int64_t vocab_end) {
  const int r = blockIdx.y;
  const int64_t id = ids[r];
  const bool mine = id >= vocab_begin && id < vocab_end;
  const uint16_t* row = table + (mine ? id - vocab_begin : 0) * hidden;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    out[r * hidden + i] = mine ? Bf16ToF32(row[i]) : 0.0f;
  }
}

__global__ void MapIdsKernel(const int32_t* in, int n, const int32_t* map, int32_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = map[in[i]];
}

// One block per row.
__global__ void RmsNormKernel(const float* x, int64_t ldx, const float* w, int64_t n, float eps, float* y,
                              int64_t ldy) {
  __shared__ float shared[32];
  const float* xr = x + blockIdx.x * ldx;
  float* yr = y + blockIdx.x * ldy;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = BlockSum(ss, shared);
  const float inv = rsqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// One thread per (row, head, pair).
__global__ void RopeKernel(float* x, int64_t ldx, int rows, int num_heads, int half, const int64_t* pos,
                           const float* inv_freq, float mscale) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t total = static_cast<int64_t>(rows) * num_heads * half;
  if (t >= total) return;
  const int i = static_cast<int>(t % half);
  const int h = static_cast<int>((t / half) % num_heads);
  const int r = static_cast<int>(t / (static_cast<int64_t>(half) * num_heads));
  // The angle as the CPU computes it: an f32 product, then f32 cos/sin.
  const float theta = static_cast<float>(pos[r]) * inv_freq[i];
  const float c = cosf(theta) * mscale, s = sinf(theta) * mscale;
  float* a = x + r * ldx + static_cast<int64_t>(h) * 2 * half;
  const float x1 = a[i], x2 = a[i + half];
  a[i] = x1 * c - x2 * s;
  a[i + half] = x2 * c + x1 * s;
}

__global__ void SwiGluKernel(const float* gate_up, int64_t ld_in, int64_t n, float limit, float alpha, float* out,
                             int64_t ld_out) {
  const int r = blockIdx.y;
  for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
    const float g = fminf(gate_up[r * ld_in + 2 * j], limit);
    const float u = fminf(fmaxf(gate_up[r * ld_in + 2 * j + 1], -limit), limit);
    out[r * ld_out + j] = g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
  }
}

__global__ void MoeCombineKernel(const float* y, int64_t ldy, const float* weight, int k, int64_t n, float* out,
                                 int64_t ldo) {
  const int r = blockIdx.y;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < k; ++s) acc += weight[r * k + s] * y[(static_cast<int64_t>(r) * k + s) * ldy + i];
    out[r * ldo + i] = acc;
  }
}

__global__ void AddKernel(float* x, int64_t ldx, const float* y, int64_t ldy, int64_t n) {
  const int r = blockIdx.y;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    x[r * ldx + i] += y[r * ldy + i];
  }
}

__global__ void GatherKernel(const float* src, int64_t lds, const int32_t* idx, int64_t n, float* dst, int64_t ldd) {
  const int r = blockIdx.y;
  const float* s = src + static_cast<int64_t>(idx[r]) * lds;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[r * ldd + i] = s[i];
}

__global__ void CountKernel(const int32_t* idx, int n, unsigned long long* counts) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(counts + idx[i], 1ull);
}

dim3 RowGrid(int64_t n, int rows) { return dim3(std::min<unsigned>(CeilDiv(n, 256), 64u), rows); }

}  // namespace

absl::Status Check(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

void EmbeddingBf16(const uint16_t* table, const int32_t* ids, int rows, int64_t hidden, float* out,
                   cudaStream_t stream, int64_t vocab_begin, int64_t vocab_end) {
  if (rows == 0) return;
  Launch(EmbeddingKernel, RowGrid(hidden, rows), 256, 0, stream, table, ids, hidden, out, vocab_begin, vocab_end);
}

void MapIds(const int32_t* in, int n, const int32_t* map, int32_t* out, cudaStream_t stream) {
  if (n == 0) return;
  Launch(MapIdsKernel, CeilDiv(n, 256), 256, 0, stream, in, n, map, out);
}

void RmsNorm(const float* x, int64_t ldx, const float* w, int rows, int64_t n, float eps, float* y, int64_t ldy,
             cudaStream_t stream) {
  if (rows == 0) return;
  Launch(RmsNormKernel, rows, 256, 0, stream, x, ldx, w, n, eps, y, ldy);
}

void Rope(float* x, int64_t ldx, int rows, int num_heads, int head_dim, const int64_t* pos, const float* inv_freq,
          float mscale, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(rows) * num_heads * (head_dim / 2);
  if (total == 0) return;
  Launch(RopeKernel, CeilDiv(total, 256), 256, 0, stream, x, ldx, rows, num_heads, head_dim / 2, pos, inv_freq, mscale);
}

void SwiGlu(const float* gate_up, int64_t ld_in, int rows, int64_t n, float limit, float alpha, float* out,
            int64_t ld_out, cudaStream_t stream) {
  if (rows == 0) return;
  Launch(SwiGluKernel, RowGrid(n, rows), 256, 0, stream, gate_up, ld_in, n, limit, alpha, out, ld_out);
}

void MoeCombine(const float* y, int64_t ldy, const float* weight, int rows, int k, int64_t n, float* out, int64_t ldo,
                cudaStream_t stream) {
  if (rows == 0) return;
  Launch(MoeCombineKernel, RowGrid(n, rows), 256, 0, stream, y, ldy, weight, k, n, out, ldo);
}

void GatherRows(const float* src, int64_t lds, const int32_t* idx, int rows, int64_t n, float* dst, int64_t ldd,
                cudaStream_t stream) {
  if (rows == 0) return;
  Launch(GatherKernel, RowGrid(n, rows), 256, 0, stream, src, lds, idx, n, dst, ldd);
}

void CountExperts(const int32_t* idx, int n, int64_t* counts, cudaStream_t stream) {
  if (n == 0) return;
  Launch(CountKernel, CeilDiv(n, 256), 256, 0, stream, idx, n, reinterpret_cast<unsigned long long*>(counts));
}

void AddInPlace(float* x, int64_t ldx, const float* y, int64_t ldy, int rows, int64_t n, cudaStream_t stream) {
  if (rows == 0) return;
  Launch(AddKernel, RowGrid(n, rows), 256, 0, stream, x, ldx, y, ldy, n);
}

}  // namespace moeserve::cuda
