// Where K/V rows live in a cache group's pool (engine/kv_cache.h's layout),
// as plain arithmetic both backends use: the CPU KvCache, and the CUDA
// kernels (these functions compile for the device too), so one CPU test
// proves the GPU addresses the same bytes.
//
//   pool of one group: [layer_in_group][block][K|V][slot 0..block_size)[kv_heads * head_dim]
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOESERVE_HOST_DEVICE __host__ __device__
#else
#define MOESERVE_HOST_DEVICE
#endif

namespace moeserve {

// Bytes of one layer's region of a group's pool.
MOESERVE_HOST_DEVICE inline int64_t KvLayerBytes(int64_t num_blocks, int block_size, int64_t row_bytes) {
  return num_blocks * 2 * block_size * row_bytes;
}

// Offset of a slot's K (value = 0) or V (value = 1) row inside a layer's
// region; slot = block * block_size + position % block_size.
MOESERVE_HOST_DEVICE inline int64_t KvRowOffset(int64_t slot, int value, int block_size, int64_t row_bytes) {
  const int64_t block = slot / block_size, offset = slot % block_size;
  return ((block * 2 + value) * block_size + offset) * row_bytes;
}

}  // namespace moeserve
