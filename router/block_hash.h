// The name of a full KV block for prefix caching (DESIGN §3).
//
// A block's K/V depends on every token before it, so its name chains over the
// whole prefix: hash_i = SHA-256(hash_{i-1} || cache_key || tokens of block i),
// with hash_{-1} all zero. `cache_key` keeps requests that must not share K/V
// apart (a LoRA adapter's id; 0 for the base model). SHA-256 rather than a
// fast non-cryptographic hash: a collision would hand one request another's
// K/V, and prompts are chosen by users (vLLM moved to SHA-256 for the same
// reason, CVE-2025-25183). Hashing costs ~0.3 µs per 16-token block.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>

namespace moeserve::router {

struct BlockHash {
  std::array<uint8_t, 32> bytes{};
  bool operator==(const BlockHash&) const = default;
};

struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const {
    size_t v;
    std::memcpy(&v, h.bytes.data(), sizeof v);  // already uniform
    return v;
  }
};

// The hash of a block of `tokens` after the block hashed `parent` (nullptr: the first block).
BlockHash HashBlock(const BlockHash* parent, int64_t cache_key, std::span<const int32_t> tokens);

}  // namespace moeserve::router
