// The element type of the K/V cache rows. fp8 is E4M3 (engine/fp8.h) with a
// scale of 1 (vLLM's default when a checkpoint brings no k_scale/v_scale, and
// gpt-oss checkpoints bring none): half the bytes of bf16; values beyond
// +-448 saturate. Standalone so device code can include it.
#pragma once

#include <string>

namespace moeserve {

enum class KvDtype { kBf16, kF32, kFp8 };

inline int KvDtypeBytes(KvDtype d) { return d == KvDtype::kF32 ? 4 : d == KvDtype::kBf16 ? 2 : 1; }
// "bf16", "f32", "fp8" (also "fp8_e4m3", vLLM's spelling); false for anything else.
bool ParseKvDtype(const std::string& s, KvDtype* out);

}  // namespace moeserve
