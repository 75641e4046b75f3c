#include "router/block_hash.h"

#include <openssl/evp.h>

#include <vector>

#include "base/status.h"

namespace moeserve::router {

BlockHash HashBlock(const BlockHash* parent, int64_t cache_key, std::span<const int32_t> tokens) {
  static const BlockHash kZero;
  const BlockHash& p = parent ? *parent : kZero;
  // Little-endian fixed-width fields: the same bytes on every host.
  uint8_t key[8];
  for (int i = 0; i < 8; ++i) key[i] = static_cast<uint8_t>(static_cast<uint64_t>(cache_key) >> (8 * i));
  thread_local EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  MOE_CHECK(ctx != nullptr);
  BlockHash out;
  unsigned int len = 0;
  bool ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, p.bytes.data(), p.bytes.size()) == 1 && EVP_DigestUpdate(ctx, key, sizeof key) == 1;
  thread_local std::vector<uint8_t> buf;
  buf.resize(tokens.size() * 4);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(tokens[i]);
    for (int k = 0; k < 4; ++k) buf[4 * i + k] = static_cast<uint8_t>(u >> (8 * k));
  }
  ok = ok && EVP_DigestUpdate(ctx, buf.data(), buf.size()) == 1;
  ok = ok && EVP_DigestFinal_ex(ctx, out.bytes.data(), &len) == 1;
  MOE_CHECK(ok && len == out.bytes.size());
  return out;
}

}  // namespace moeserve::router
