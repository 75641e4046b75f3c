// The SIMD kernels of the CPU backend, chosen once at run time.
//
// Each instruction-set variant lives in its own translation unit compiled with
// its own target flags (kernels_generic.cc, kernels_avx2.cc,
// kernels_avx512.cc); ActiveKernels() picks the best one the CPU supports.
// Setting MOESERVE_CPU_ISA=generic|avx2|avx512 forces a lower variant (tests
// run every variant the host supports).
//
// All matmuls share one contract, "nn.Linear" orientation:
//   y[t, o] = sum_k W[o, k] * x[t, k]       for o in [o_begin, o_end), t < num_tokens
// with f32 activations and f32 accumulation; bias is added by the caller.
//   W: [rows, k] row-major (ld = k); x: [num_tokens, ldx]; y: [num_tokens, ldy]
#pragma once

#include <cstdint>

namespace moeserve::cpu {

struct Kernels {
  const char* name;
  // Dense BF16 weights.
  void (*gemm_bf16)(const uint16_t* w, int64_t k, const float* x, int64_t ldx, int num_tokens,
                    int64_t o_begin, int64_t o_end, float* y, int64_t ldy);
  // Dense F32 weights.
  void (*gemm_f32)(const float* w, int64_t k, const float* x, int64_t ldx, int num_tokens,
                   int64_t o_begin, int64_t o_end, float* y, int64_t ldy);
  // MXFP4 weights as stored by Hugging Face: blocks [rows, k/32, 16] (low nibble =
  // even column, high nibble = odd column), scales [rows, k/32] (E8M0). The
  // activations must be permuted with PermuteForMxfp4 first. k % 32 == 0.
  void (*gemm_mxfp4)(const uint8_t* blocks, const uint8_t* scales, int64_t k, const float* x_perm,
                     int64_t ldx, int num_tokens, int64_t o_begin, int64_t o_end, float* y, int64_t ldy);
  // Attention of one query row against n keys for the query heads of one KV
  // head (spec §2.4): scores q.k * scale, softmax with a per-head sink logit
  // that has no value, weighted sum of values.
  //   q: [group, head_dim]; k_rows[j], v_rows[j]: that KV head's row of key j
  //   (bf16 or f32); sinks: [group]; scratch: >= group * n floats;
  //   out: [group, head_dim]
  void (*attend)(const float* q, int group, int head_dim, const void* const* k_rows, const void* const* v_rows,
                 int64_t n, bool bf16, const float* sinks, float scale, float* scratch, float* out);
  // Clamped SwiGLU on interleaved gate/up (spec §2.5): out[j] = g' sigmoid(alpha g') (u' + 1),
  // g' = min(g, limit), u' = clamp(u, -limit, limit).   gate_up: [2n]  out: [n]
  void (*swiglu)(const float* gate_up, int64_t n, float limit, float alpha, float* out);
};

const Kernels& ActiveKernels();
// Every variant this CPU can run, best first (for tests).
int NumSupportedKernels();
const Kernels& SupportedKernels(int i);

// Reorders each 32-element group of x from [c0 c1 ... c31] to
// [c0 c2 ... c30 | c1 c3 ... c31] so low and high nibbles of a block meet
// contiguous activations.
void PermuteForMxfp4(const float* x, float* x_perm, int64_t k);

// The 16 E2M1 values and the 256 E8M0 scales, exactly as the spec defines them.
extern const float kFp4Values[16];
float E8m0ToFloat(uint8_t s);

// The portable attention, shared by the variants without their own.
void AttendGeneric(const float* q, int group, int head_dim, const void* const* k_rows, const void* const* v_rows,
                   int64_t n, bool bf16, const float* sinks, float scale, float* scratch, float* out);

void SwiGluGeneric(const float* gate_up, int64_t n, float limit, float alpha, float* out);

// Variants (defined in their own translation units).
extern const Kernels kGenericKernels;
extern const Kernels kAvx2Kernels;
extern const Kernels kAvx512Kernels;

}  // namespace moeserve::cpu
