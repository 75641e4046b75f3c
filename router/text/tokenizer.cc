#include "router/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

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

namespace moeserve::text {
namespace {

// o200k_base / o200k_harmony pre-tokenisation (tokenizer.md §4), with `\s`
// written out as the Unicode White_Space set so no engine's own idea of `\s`
// leaks in.
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
constexpr char kPattern[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}"
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n/]*"
    "|[" WS "]*[\\r\\n]+"
    "|[" WS "]+(?![^" WS "])"
    "|[" WS "]+";
#undef WS

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

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Tokenizer::Tokenizer() : regex_(std::make_unique<Regex>()) {}
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
  int err;
  PCRE2_SIZE off;
  regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                               &err, &off, nullptr);
  if (!regex_->code) return absl::InternalError(absl::StrCat("pre-tokenizer pattern failed to compile at ", off));
  pcre2_jit_compile(regex_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
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

void Tokenizer::EncodePiece(const char* p, size_t n, std::vector<int32_t>* out) const {
  if (auto it = ranks_.find(std::string(p, n)); it != ranks_.end()) {
    out->push_back(it->second);
    return;
  }
  // Rank-based byte-pair merging (tiktoken's rule: merge the lowest-ranked
  // adjacent pair, leftmost on ties) with a heap and lazy invalidation.
  const int m = static_cast<int>(n);
  std::vector<int> next(m), prev(m), version(m, 0);
  std::vector<bool> alive(m, true);
  for (int i = 0; i < m; ++i) {
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  auto pair_rank = [&](int i) -> int32_t {  // rank of part i joined with its successor
    if (i < 0 || next[i] >= m) return INT32_MAX;
    const int end = next[next[i]] <= m ? next[next[i]] : m;
    auto it = ranks_.find(absl::string_view(p + i, end - i));
    return it == ranks_.end() ? INT32_MAX : it->second;
  };
  struct Item {
    int32_t rank;
    int pos, ver;
    bool operator>(const Item& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (int i = 0; i + 1 < m; ++i) {
    const int32_t r = pair_rank(i);
    if (r != INT32_MAX) heap.push({r, i, 0});
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
    if (const int32_t r = pair_rank(it.pos); r != INT32_MAX) heap.push({r, it.pos, version[it.pos]});
    if (const int pv = prev[it.pos]; pv >= 0) {
      ++version[pv];
      if (const int32_t r = pair_rank(pv); r != INT32_MAX) heap.push({r, pv, version[pv]});
    }
  }
  for (int i = 0; i < m; i = next[i]) {
    auto f = ranks_.find(absl::string_view(p + i, next[i] - i));
    out->push_back(f == ranks_.end() ? 0 : f->second);  // every single byte is a token in o200k
  }
}

void Tokenizer::EncodeOrdinaryInto(const char* p, size_t n, std::vector<int32_t>* out) const {
  thread_local absl::flat_hash_map<std::string, std::vector<int32_t>> cache;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
  size_t pos = 0;
  while (pos < n) {
    const int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(p), n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    size_t b = pos, e;
    if (rc < 0) {
      // No alternative matched (cannot happen for valid UTF-8); take one character.
      e = pos + 1;
      while (e < n && (static_cast<uint8_t>(p[e]) & 0xC0) == 0x80) ++e;
    } else {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      b = ov[0];
      e = ov[1];
      if (b > pos) EncodePiece(p + pos, b - pos, out);  // unmatched gap (defensive)
      if (e == b) {  // empty match: step one character
        e = b + 1;
        while (e < n && (static_cast<uint8_t>(p[e]) & 0xC0) == 0x80) ++e;
      }
    }
    const size_t len = e - b;
    if (len <= 64) {
      std::string key(p + b, len);
      auto it = cache.find(key);
      if (it == cache.end()) {
        if (cache.size() > (1 << 16)) cache.clear();
        std::vector<int32_t> ids;
        EncodePiece(p + b, len, &ids);
        it = cache.emplace(std::move(key), std::move(ids)).first;
      }
      out->insert(out->end(), it->second.begin(), it->second.end());
    } else {
      EncodePiece(p + b, len, out);
    }
    pos = e;
  }
  pcre2_match_data_free(md);
}

std::vector<int32_t> Tokenizer::EncodeOrdinary(const std::string& text) const {
  const std::string clean = SanitizeUtf8(text);
  std::vector<int32_t> out;
  EncodeOrdinaryInto(clean.data(), clean.size(), &out);
  return out;
}

std::vector<int32_t> Tokenizer::EncodeWithSpecials(const std::string& text) const {
  const std::string clean = SanitizeUtf8(text);
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
