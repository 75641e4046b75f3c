// The o200k_harmony tokenizer of gpt-oss: byte-level BPE with tiktoken's
// rank-based merges, the o200k pre-tokenisation pattern, and the harmony
// special tokens.
//
// Loads either a Hugging Face `tokenizer.json` (vocab ids are the tiktoken
// ranks) or a `.tiktoken` ranks file; in both cases the special tokens are
// completed up to the model's vocabulary size with `<|reserved_N|>` names, as
// openai/gpt-oss builds them (ids 200019..201087 are not in tokenizer.json).
//
// Pre-tokenisation is the hand-written o200k splitter of pretokenizer.h over
// Unicode 16 tables, as tiktoken's regex engine classifies code points.
// Merging works on arrays on the stack for short pieces and with a heap for
// long ones, so a piece of n bytes costs O(n log n) (a 1 MB run of one
// character is fine). Rank lookups: direct tables for one- and two-byte
// strings; for longer ones a Bloom filter first (most strings merging asks
// about are not tokens), then an exact-key table for tokens of 3-7 bytes or
// the hash map.
//
// Invalid UTF-8 in text to encode is replaced by U+FFFD first, as the npm
// reference tokenizers do. Thread-safety: immutable after loading; Encode and
// Decode may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace moeserve::text {

class Tokenizer {
 public:
  // `vocab_size` 0 keeps only the tokens the file defines.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(const std::string& path,
                                                                      int64_t vocab_size = 201088);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTiktoken(const std::string& path,
                                                                 int64_t vocab_size = 201088);
  ~Tokenizer();

  // Text with special-token strings treated as plain text.
  std::vector<int32_t> EncodeOrdinary(const std::string& text) const;
  // Text in which special-token strings become their ids.
  std::vector<int32_t> EncodeWithSpecials(const std::string& text) const;
  // Bytes of the ids; an id outside the vocabulary is an error.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const;
  // The bytes of one token (special tokens: their text), or nullptr if unknown.
  const std::string* TokenBytes(int32_t id) const;
  // The id of a special token's text, or -1.
  int32_t SpecialId(const std::string& token) const;

  int64_t vocab_size() const { return static_cast<int64_t>(pieces_.size()); }
  int64_t num_ordinary() const { return num_ordinary_; }

 private:
  Tokenizer();
  absl::Status Finish(int64_t vocab_size);
  static constexpr int32_t kNoRank = INT32_MAX;
  static constexpr size_t kShortPiece = 96;  // longer pieces merge with a heap
  int32_t Rank(const char* p, size_t n) const;  // kNoRank if the bytes are not a token
  void EncodePiece(const char* p, size_t n, std::vector<int32_t>* out) const;
  void EncodeLongPiece(const char* p, size_t n, std::vector<int32_t>* out) const;
  void EncodeOrdinaryInto(const char* p, size_t n, std::vector<int32_t>* out) const;

  absl::flat_hash_map<std::string, int32_t> ranks_;     // byte string -> rank (ordinary tokens)
  absl::flat_hash_map<std::string, int32_t> specials_;  // special text -> id
  std::vector<std::string> pieces_;                      // id -> bytes (or special text)
  std::vector<bool> is_special_;
  int64_t num_ordinary_ = 0;
  std::vector<int32_t> byte_rank_;  // byte -> rank
  std::vector<int32_t> pair_rank_;  // (b0 << 8 | b1) -> rank of the two bytes
  static constexpr int kFilterBits = 22;  // 512 KB
  std::vector<uint64_t> filter_;         // Bloom filter of the tokens of 3+ bytes
  bool MaybeToken(const char* p, size_t n) const;
  static constexpr size_t kShortToken = 7;
  std::vector<uint64_t> short_keys_;  // tokens of 3..kShortToken bytes: exact keys (0: empty slot)
  std::vector<int32_t> short_ranks_;
  int short_shift_ = 64;
};

// Streaming detokenizer: feed ids, get text that never ends inside a UTF-8
// character; bytes of an incomplete character wait for the next token, and
// Flush() returns whatever is left (invalid bytes as U+FFFD).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer) : tok_(tokenizer) {}
  // Appends the text that is complete after this token.
  absl::StatusOr<std::string> Add(int32_t id);
  std::string Flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

// True if `s` is valid UTF-8 (no surrogates, no overlong forms).
bool IsValidUtf8(std::string_view s);
// Replaces invalid UTF-8 sequences with U+FFFD (maximal subparts, like the
// WHATWG decoder).
std::string SanitizeUtf8(const std::string& s);
// Length of the longest prefix of `s` that ends on a UTF-8 character boundary
// and contains only complete characters (invalid bytes count as complete).
size_t CompleteUtf8Prefix(const std::string& s);

}  // namespace moeserve::text
