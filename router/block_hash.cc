#include "router/block_hash.h"

#include <openssl/evp.h>

#include <algorithm>
#include <vector>

#include "base/status.h"

namespace moeserve::router {

BlockHash HashBlock(const BlockHash* parent, int64_t cache_key, std::span<const int32_t> tokens) {
  static const BlockHash kZero;
  const BlockHash& p = parent ? *parent : kZero;
  // parent hash | cache key | token ids, little-endian fixed-width fields: the same bytes on every host.
  thread_local std::vector<uint8_t> buf;
  buf.resize(p.bytes.size() + 8 + tokens.size() * 4);
  std::copy(p.bytes.begin(), p.bytes.end(), buf.begin());
  uint8_t* o = buf.data() + p.bytes.size();
  for (int i = 0; i < 8; ++i) *o++ = static_cast<uint8_t>(static_cast<uint64_t>(cache_key) >> (8 * i));
  for (int32_t t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    for (int k = 0; k < 4; ++k) *o++ = static_cast<uint8_t>(u >> (8 * k));
  }
  // One-shot digest: no context is kept per thread (a thread_local context leaked when loop threads ended).
  BlockHash out;
  unsigned int len = 0;
  MOE_CHECK(EVP_Digest(buf.data(), buf.size(), out.bytes.data(), &len, EVP_sha256(), nullptr) == 1 &&
            len == out.bytes.size());
  return out;
}

}  // namespace moeserve::router
