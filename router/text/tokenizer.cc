#include "router/text/tokenizer.h"

#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "base/harmony_tokens.h"
#include "base/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "router/text/pretokenizer.h"

namespace moeserve::text {
namespace {

// GPT-2 byte-level alphabet: code point -> byte.
absl::flat_hash_map<uint32_t, uint8_t> ByteDecoder() {
  absl::flat_hash_map<uint32_t, uint8_t> m;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    m[printable ? b : 256 + extra++] = static_cast<uint8_t>(b);
  }
  return m;
}

// Decodes one UTF-8 character at s[i]; returns its length (1 for an invalid
// byte, with *cp = 0xFFFD).
int DecodeUtf8(const std::string& s, size_t i, uint32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  const size_t left = s.size() - i;
  auto cont = [&](size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  if (c >= 0xC2 && c <= 0xDF && left >= 2 && cont(i + 1)) {
    *cp = ((c & 0x1F) << 6) | (b(i + 1) & 0x3F);
    return 2;
  }
  if (c >= 0xE0 && c <= 0xEF && left >= 3 && cont(i + 1) && cont(i + 2)) {
    const uint32_t v = ((c & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    if (v >= 0x800 && (v < 0xD800 || v > 0xDFFF)) {
      *cp = v;
      return 3;
    }
  }
  if (c >= 0xF0 && c <= 0xF4 && left >= 4 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
    const uint32_t v =
        ((c & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
    if (v >= 0x10000 && v <= 0x10FFFF) {
      *cp = v;
      return 4;
    }
  }
  *cp = 0xFFFD;
  // Maximal subpart: skip the lead byte and the continuation bytes it could own.
  int n = 1;
  const int want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
  while (n < want && cont(i + n)) {
    // Second-byte range checks of the WHATWG decoder.
    if (n == 1) {
      const uint8_t d = b(i + 1);
      if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F)) {
        break;
      }
    }
    ++n;
  }
  return n;
}

// The exact key of a byte string of 3..7 bytes in the short-rank table: the
// bytes, and the length in the top byte (so no key is 0, the empty slot).
inline uint64_t ShortKey(const char* p, size_t n) {
  uint64_t k;
  if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    k = a | static_cast<uint64_t>(b) << ((n - 4) * 8);
  } else {
    k = static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8 | static_cast<uint8_t>(p[2]) << 16;
  }
  return (k & ((uint64_t{1} << (n * 8)) - 1)) | static_cast<uint64_t>(n) << 56;
}

// A hash of a byte string of 3 or more bytes for the token filter: its exact
// short key up to 7 bytes, else its first and last 8 bytes (overlapping
// loads) and its length; mixed so that the top bits index the filter.
inline uint64_t FilterHash(const char* p, size_t n) {
  uint64_t k;
  if (n <= 7) {
    k = ShortKey(p, n);
  } else {
    uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + n - 8, 8);
    k = a ^ (b * 0x9E3779B97F4A7C15ull) ^ (n * 0xD6E8FEB86659FD93ull);
  }
  k ^= k >> 32;
  k *= 0xD6E8FEB86659FD93ull;
  k ^= k >> 32;
  return k;
}

// The harmony special tokens with fixed ids (openai/gpt-oss tokenizer.py).
const std::vector<std::pair<std::string, int32_t>>& HarmonySpecials() {
  static const auto* v = new std::vector<std::pair<std::string, int32_t>>{
      {"<|startoftext|>", harmony::kStartOfText}, {"<|endoftext|>", harmony::kEndOfText},
      {"<|return|>", harmony::kReturn},             {"<|constrain|>", harmony::kConstrain},
      {"<|channel|>", harmony::kChannel},           {"<|start|>", harmony::kStart},
      {"<|end|>", harmony::kEnd},                   {"<|message|>", harmony::kMessage},
      {"<|call|>", harmony::kCall},                 {"<|endofprompt|>", harmony::kEndOfPrompt}};
  return *v;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    // Eight ASCII bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    auto cont = [&](size_t k) { return k < n && (p[k] & 0xC0) == 0x80; };
    if (c >= 0xC2 && c <= 0xDF) {
      if (!cont(i + 1)) return false;
      i += 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      if (!cont(i + 1) || !cont(i + 2)) return false;
      const uint8_t d = p[i + 1];
      if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F)) return false;  // overlong, surrogate
      i += 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return false;
      const uint8_t d = p[i + 1];
      if ((c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F)) return false;  // overlong, past U+10FFFF
      i += 4;
    } else {
      return false;
    }
  }
  return true;
}

std::string SanitizeUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const int n = DecodeUtf8(s, i, &cp);
    if (cp == 0xFFFD && !(n == 3 && s.compare(i, 3, "\xEF\xBF\xBD") == 0)) out += "\xEF\xBF\xBD";
    else out.append(s, i, n);
    i += n;
  }
  return out;
}

size_t CompleteUtf8Prefix(const std::string& s) {
  // Only the last 3 bytes can belong to an incomplete character.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const uint8_t c = static_cast<uint8_t>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (c < 0xC2 || c > 0xF4 || need <= back) return s.size();  // complete, or invalid anyway
    // A lead byte whose character is not complete: hold it back only if the
    // bytes so far can still become a valid character (WHATWG second-byte
    // ranges; later bytes are any continuation byte).
    if (back >= 2) {
      const uint8_t d = static_cast<uint8_t>(s[s.size() - back + 1]);
      const uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
      const uint8_t hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
      if (d < lo || d > hi) return s.size();
    }
    return s.size() - back;
  }
  return s.size();
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::Finish(int64_t vocab_size) {
  num_ordinary_ = static_cast<int64_t>(ranks_.size());
  pieces_.assign(std::max<int64_t>(vocab_size, num_ordinary_), "");
  is_special_.assign(pieces_.size(), false);
  for (const auto& [bytes, id] : ranks_) {
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) {
      return absl::DataLossError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
    pieces_[id] = bytes;
  }
  for (const auto& [name, id] : HarmonySpecials()) {
    if (id < static_cast<int64_t>(pieces_.size()) && !specials_.contains(name)) {
      bool taken = false;
      for (const auto& [n, i] : specials_) taken |= i == id;
      if (!taken) specials_[name] = id;
    }
  }
  for (const auto& [name, id] : specials_) {
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) continue;
    pieces_[id] = name;
    is_special_[id] = true;
  }
  // Every remaining id past the ordinary ranks is a reserved special token.
  for (int64_t id = num_ordinary_; id < static_cast<int64_t>(pieces_.size()); ++id) {
    if (is_special_[id]) continue;
    const std::string name = absl::StrCat("<|reserved_", id, "|>");
    pieces_[id] = name;
    is_special_[id] = true;
    specials_.emplace(name, static_cast<int32_t>(id));
  }
  // Direct tables for the ranks of one- and two-byte strings: every merge
  // starts from pairs of bytes.
  byte_rank_.assign(256, kNoRank);
  pair_rank_.assign(65536, kNoRank);
  for (const auto& [bytes, id] : ranks_) {
    if (bytes.size() == 1) byte_rank_[static_cast<uint8_t>(bytes[0])] = id;
    if (bytes.size() == 2) pair_rank_[static_cast<uint8_t>(bytes[0]) << 8 | static_cast<uint8_t>(bytes[1])] = id;
  }
  // A one-hash Bloom filter over the tokens of 3 or more bytes, small enough
  // to stay in cache: most byte strings that merging asks about are not
  // tokens, and the filter answers most of those without the hash map.
  // Tokens of 3..7 bytes (most merges) in an open-addressing table of exact
  // keys, at most half full.
  size_t num_short = 0;
  for (const auto& [bytes, id] : ranks_) num_short += bytes.size() >= 3 && bytes.size() <= kShortToken;
  int bits = 4;
  while ((size_t{1} << bits) < 2 * num_short) ++bits;
  short_keys_.assign(size_t{1} << bits, 0);
  short_ranks_.assign(size_t{1} << bits, kNoRank);
  short_shift_ = 64 - bits;
  for (const auto& [bytes, id] : ranks_) {
    if (bytes.size() < 3 || bytes.size() > kShortToken) continue;
    const uint64_t key = ShortKey(bytes.data(), bytes.size());
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> short_shift_;
    while (short_keys_[i] != 0) i = (i + 1) & (short_keys_.size() - 1);
    short_keys_[i] = key;
    short_ranks_[i] = id;
  }
  filter_.assign(size_t{1} << (kFilterBits - 6), 0);
  for (const auto& [bytes, id] : ranks_) {
    if (bytes.size() < 3) continue;
    const uint64_t h = FilterHash(bytes.data(), bytes.size()) >> (64 - kFilterBits);
    filter_[h >> 6] |= uint64_t{1} << (h & 63);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(const std::string& path, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError(absl::StrCat(path, ": not JSON"));
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object() || !model->contains("vocab") || !(*model)["vocab"].is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": no model.vocab"));
  }
  if (model->value("type", "") != "BPE") return absl::DataLossError(absl::StrCat(path, ": model.type is not BPE"));
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  const auto decoder = ByteDecoder();
  for (const auto& [tok, idj] : (*model)["vocab"].items()) {
    if (!idj.is_number_integer()) return absl::DataLossError(absl::StrCat(path, ": vocab entry ", tok, " has no id"));
    std::string bytes;
    for (size_t i = 0; i < tok.size();) {
      uint32_t cp;
      const int n = DecodeUtf8(tok, i, &cp);
      auto it = decoder.find(cp);
      if (it == decoder.end()) return absl::DataLossError(absl::StrCat(path, ": vocab entry ", tok, " is not byte-level"));
      bytes.push_back(static_cast<char>(it->second));
      i += n;
    }
    t->ranks_[bytes] = idj.get<int32_t>();
  }
  if (auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (const auto& a : *added) {
      if (a.contains("content") && a["content"].is_string() && a.contains("id") && a["id"].is_number_integer()) {
        t->specials_[a["content"].get<std::string>()] = a["id"].get<int32_t>();
      }
    }
  }
  RETURN_IF_ERROR(t->Finish(vocab_size));
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTiktoken(const std::string& path, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    std::string bytes;
    int32_t rank;
    if (parts.size() != 2 || !absl::Base64Unescape(parts[0], &bytes) || !absl::SimpleAtoi(parts[1], &rank)) {
      return absl::DataLossError(absl::StrCat(path, ":", line_no, ": expected \"<base64> <rank>\""));
    }
    t->ranks_[bytes] = rank;
  }
  RETURN_IF_ERROR(t->Finish(vocab_size));
  return t;
}

inline bool Tokenizer::MaybeToken(const char* p, size_t n) const {
  const uint64_t h = FilterHash(p, n) >> (64 - kFilterBits);
  return filter_[h >> 6] >> (h & 63) & 1;
}

int32_t Tokenizer::Rank(const char* p, size_t n) const {
  if (n == 2) return pair_rank_[static_cast<uint8_t>(p[0]) << 8 | static_cast<uint8_t>(p[1])];
  if (n == 1) return byte_rank_[static_cast<uint8_t>(p[0])];
  if (!MaybeToken(p, n)) return kNoRank;
  if (n <= kShortToken) {
    const uint64_t key = ShortKey(p, n);
    const size_t mask = short_keys_.size() - 1;
    for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> short_shift_;; i = (i + 1) & mask) {
      if (short_keys_[i] == key) return short_ranks_[i];
      if (short_keys_[i] == 0) return kNoRank;
    }
  }
  auto it = ranks_.find(absl::string_view(p, n));
  return it == ranks_.end() ? kNoRank : it->second;
}

void Tokenizer::EncodePiece(const char* p, size_t n, std::vector<int32_t>* out) const {
  if (const int32_t r = Rank(p, n); r != kNoRank) {
    out->push_back(r);
    return;
  }
  if (n > kShortPiece) {
    EncodeLongPiece(p, n, out);
    return;
  }
  // Rank-based byte-pair merging (tiktoken's rule: merge the lowest-ranked
  // adjacent pair, leftmost on ties) over arrays on the stack: part j is
  // bytes [start[j], start[j + 1]) with token id part[j], and rank[j] is the
  // rank of parts j and j+1 joined. Quadratic in the piece, which for short
  // pieces beats a heap.
  uint16_t start[kShortPiece + 1];
  int32_t part[kShortPiece];
  int32_t rank[kShortPiece];
  int m = static_cast<int>(n);
  const auto* b = reinterpret_cast<const uint8_t*>(p);
  for (int j = 0; j < m; ++j) {
    start[j] = static_cast<uint16_t>(j);
    part[j] = byte_rank_[b[j]];
  }
  start[m] = static_cast<uint16_t>(m);
  for (int j = 0; j + 1 < m; ++j) rank[j] = pair_rank_[b[j] << 8 | b[j + 1]];
  while (m > 1) {
    // The lowest rank, then its leftmost position: two loops the compiler
    // can vectorise.
    int32_t best_rank = kNoRank;
    for (int j = 0; j + 1 < m; ++j) best_rank = std::min(best_rank, rank[j]);
    if (best_rank == kNoRank) break;
    int best = 0;
    while (rank[best] != best_rank) ++best;
    // Join parts best and best+1.
    part[best] = best_rank;
    std::memmove(start + best + 1, start + best + 2, (m - best - 1) * sizeof(start[0]));
    std::memmove(part + best + 1, part + best + 2, (m - best - 2) * sizeof(part[0]));
    std::memmove(rank + best + 1, rank + best + 2, (m - best - 2 > 0 ? m - best - 2 : 0) * sizeof(rank[0]));
    --m;
    if (best + 1 < m) rank[best] = Rank(p + start[best], start[best + 2] - start[best]);
    if (best > 0) rank[best - 1] = Rank(p + start[best - 1], start[best + 1] - start[best - 1]);
  }
  for (int j = 0; j < m; ++j) out->push_back(part[j] == kNoRank ? 0 : part[j]);  // every byte is a token in o200k
}

void Tokenizer::EncodeLongPiece(const char* p, size_t n, std::vector<int32_t>* out) const {
  // The same merging with a heap and lazy invalidation: O(n log n), so a
  // megabyte-long run of one character is fine.
  const int m = static_cast<int>(n);
  std::vector<int> next(m), prev(m), version(m, 0);
  std::vector<bool> alive(m, true);
  for (int i = 0; i < m; ++i) {
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  auto pair_rank = [&](int i) -> int32_t {  // rank of part i joined with its successor
    if (i < 0 || next[i] >= m) return kNoRank;
    const int end = next[next[i]] <= m ? next[next[i]] : m;
    return Rank(p + i, end - i);
  };
  struct Item {
    int32_t rank;
    int pos, ver;
    bool operator>(const Item& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (int i = 0; i + 1 < m; ++i) {
    const int32_t r = pair_rank(i);
    if (r != kNoRank) heap.push({r, i, 0});
  }
  while (!heap.empty()) {
    const Item it = heap.top();
    heap.pop();
    if (!alive[it.pos] || it.ver != version[it.pos] || next[it.pos] >= m) continue;
    if (pair_rank(it.pos) != it.rank) continue;
    const int j = next[it.pos];
    alive[j] = false;
    next[it.pos] = next[j];
    if (next[j] < m) prev[next[j]] = it.pos;
    ++version[it.pos];
    if (const int32_t r = pair_rank(it.pos); r != kNoRank) heap.push({r, it.pos, version[it.pos]});
    if (const int pv = prev[it.pos]; pv >= 0) {
      ++version[pv];
      if (const int32_t r = pair_rank(pv); r != kNoRank) heap.push({r, pv, version[pv]});
    }
  }
  for (int i = 0; i < m; i = next[i]) {
    const int32_t r = Rank(p + i, next[i] - i);
    out->push_back(r == kNoRank ? 0 : r);
  }
}

void Tokenizer::EncodeOrdinaryInto(const char* p, size_t n, std::vector<int32_t>* out) const {
  const O200kSplitter splitter(std::string_view(p, n));
  for (size_t b = 0; b < n;) {
    const size_t e = splitter.PieceEnd(b);
    EncodePiece(p + b, e - b, out);
    b = e;
  }
}

std::vector<int32_t> Tokenizer::EncodeOrdinary(const std::string& text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 1);
  if (IsValidUtf8(text)) {
    EncodeOrdinaryInto(text.data(), text.size(), &out);
  } else {
    const std::string clean = SanitizeUtf8(text);
    EncodeOrdinaryInto(clean.data(), clean.size(), &out);
  }
  return out;
}

std::vector<int32_t> Tokenizer::EncodeWithSpecials(const std::string& text) const {
  const std::string clean = IsValidUtf8(text) ? text : SanitizeUtf8(text);
  std::vector<int32_t> out;
  size_t start = 0, pos = 0;
  while ((pos = clean.find("<|", pos)) != std::string::npos) {
    const size_t close = clean.find("|>", pos + 2);
    if (close == std::string::npos) break;
    auto it = specials_.find(absl::string_view(clean).substr(pos, close + 2 - pos));
    if (it == specials_.end()) {
      pos += 2;
      continue;
    }
    EncodeOrdinaryInto(clean.data() + start, pos - start, &out);
    out.push_back(it->second);
    start = pos = close + 2;
  }
  EncodeOrdinaryInto(clean.data() + start, clean.size() - start, &out);
  return out;
}

const std::string* Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(pieces_.size()) || (pieces_[id].empty() && !is_special_[id])) return nullptr;
  return &pieces_[id];
}

int32_t Tokenizer::SpecialId(const std::string& token) const {
  auto it = specials_.find(token);
  return it == specials_.end() ? -1 : it->second;
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    const std::string* b = TokenBytes(id);
    if (!b) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary"));
    out += *b;
  }
  return out;
}

absl::StatusOr<std::string> IncrementalDecoder::Add(int32_t id) {
  const std::string* b = tok_.TokenBytes(id);
  if (!b) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary"));
  pending_ += *b;
  const size_t n = CompleteUtf8Prefix(pending_);
  std::string out = SanitizeUtf8(pending_.substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace moeserve::text
