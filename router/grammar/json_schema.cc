#include "router/grammar/json_schema.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace moeserve::grammar {
namespace {

using json = nlohmann::ordered_json;

// ---- Code point sets and their JSON-string encodings ----

using Intervals = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive, sorted, disjoint

Intervals Normalize(Intervals v) {
  std::sort(v.begin(), v.end());
  Intervals out;
  for (auto [a, b] : v) {
    if (a > b) continue;
    if (!out.empty() && a <= out.back().second + 1) out.back().second = std::max(out.back().second, b);
    else out.emplace_back(a, b);
  }
  return out;
}

Intervals Complement(const Intervals& v) {
  Intervals out;
  uint32_t next = 0;
  for (auto [a, b] : v) {
    if (a > next) out.emplace_back(next, a - 1);
    next = b + 1;
  }
  if (next <= 0x10FFFF) out.emplace_back(next, 0x10FFFF);
  return out;
}

std::string Hex2(uint32_t c) {
  static const char* d = "0123456789abcdef";
  return {d[(c >> 4) & 15], d[c & 15]};
}

// The code points of `set` as they may appear inside a JSON string: raw where
// JSON allows, escaped where it must be.
Expr JsonChars(const Intervals& set) {
  std::vector<Expr> alts;
  ByteSet ascii;
  for (auto [a, b] : set) {
    for (uint32_t c = a; c <= std::min<uint32_t>(b, 0x7F); ++c) {
      if (c == '"') alts.push_back(Lit("\\\""));
      else if (c == '\\') alts.push_back(Lit("\\\\"));
      else if (c < 0x20) {
        switch (c) {
          case '\n': alts.push_back(Lit("\\n")); break;
          case '\t': alts.push_back(Lit("\\t")); break;
          case '\r': alts.push_back(Lit("\\r")); break;
          case '\b': alts.push_back(Lit("\\b")); break;
          case '\f': alts.push_back(Lit("\\f")); break;
          default: alts.push_back(Lit("\\u00" + Hex2(c)));
        }
      } else {
        ascii.set(c);
      }
    }
    if (b >= 0x80) alts.push_back(CodePoints(std::max<uint32_t>(a, 0x80), b));
  }
  if (ascii.any()) alts.push_back(Bytes(ascii));
  if (alts.empty()) return Bytes(ByteSet());  // matches nothing
  return Alt(std::move(alts));
}

// Any JSON string character: raw (no quote, backslash or control) or an escape.
Expr AnyJsonChar() {
  ByteSet hex;
  for (char c : std::string("0123456789abcdefABCDEF")) hex.set(static_cast<uint8_t>(c));
  ByteSet hex_no_d = hex;
  hex_no_d.reset('d');
  hex_no_d.reset('D');
  ByteSet simple;
  for (char c : std::string("\"\\/bfnrt")) simple.set(static_cast<uint8_t>(c));
  ByteSet lo8;
  for (char c : std::string("01234567")) lo8.set(static_cast<uint8_t>(c));
  ByteSet dD;
  dD.set('d');
  dD.set('D');
  // \uXXXX without lone surrogates (D800-DFFF).
  Expr u = Seq({Lit("\\u"), Alt({Seq({Bytes(hex_no_d), Bytes(hex), Bytes(hex), Bytes(hex)}),
                                Seq({Bytes(dD), Bytes(lo8), Bytes(hex), Bytes(hex)})})});
  ByteSet raw;
  for (int c = 0x20; c < 0x80; ++c) raw.set(c);
  raw.reset('"');
  raw.reset('\\');
  return Alt({Bytes(raw), CodePoints(0x80, 0x10FFFF), Seq({Lit("\\"), Bytes(simple)}), std::move(u)});
}

// Raw string characters (no escapes): what additional property names are written with.
Intervals RawChars() { return Normalize({{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0xD7FF}, {0xE000, 0x10FFFF}}); }

std::vector<uint32_t> DecodeCodePoints(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

// The contents of raw JSON strings other than the names in `taken` (as a
// trie of code points: leave it anywhere a name does not continue).
Expr RawStringNotIn(const std::vector<std::vector<uint32_t>>& taken, size_t depth = 0) {
  const Intervals raw = RawChars();
  std::vector<Expr> alts;
  bool terminal = false;
  std::map<uint32_t, std::vector<std::vector<uint32_t>>> children;
  for (const auto& t : taken) {
    if (t.size() == depth) terminal = true;
    else children[t[depth]].push_back(t);
  }
  if (!terminal) alts.push_back(Empty());
  Intervals others = raw;
  for (const auto& [cp, names] : children) {
    alts.push_back(Seq({JsonChars({{cp, cp}}), RawStringNotIn(names, depth + 1)}));
    Intervals next;
    for (auto [a, b] : others) {
      if (cp < a || cp > b) {
        next.emplace_back(a, b);
        continue;
      }
      if (a < cp) next.emplace_back(a, cp - 1);
      if (cp < b) next.emplace_back(cp + 1, b);
    }
    others = next;
  }
  alts.push_back(Seq({JsonChars(others), Star(JsonChars(raw))}));
  return Alt(std::move(alts));
}

// ---- ECMA-262 regular expressions (a subset) over JSON string characters ----

class RegexParser {
 public:
  RegexParser(std::string_view p, Expr any_char) : p_(p), any_(std::move(any_char)) {}

  absl::StatusOr<Expr> Parse() {
    bool anchored_start = false, anchored_end = false;
    if (!p_.empty() && p_[0] == '^') {
      anchored_start = true;
      p_.remove_prefix(1);
    }
    if (!p_.empty() && p_.back() == '$' && (p_.size() < 2 || p_[p_.size() - 2] != '\\')) {
      anchored_end = true;
      p_.remove_suffix(1);
    }
    Expr body = ParseAlt();
    if (!error_.empty()) return absl::InvalidArgumentError(error_);
    if (i_ != p_.size()) return absl::InvalidArgumentError(absl::StrCat("unexpected '", std::string(1, p_[i_]), "'"));
    std::vector<Expr> seq;
    if (!anchored_start) seq.push_back(Star(any_));
    seq.push_back(std::move(body));
    if (!anchored_end) seq.push_back(Star(any_));
    return Seq(std::move(seq));
  }

 private:
  bool More() const { return i_ < p_.size() && error_.empty(); }
  void Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }

  Expr ParseAlt() {
    std::vector<Expr> alts{ParseSeq()};
    while (More() && p_[i_] == '|') {
      ++i_;
      alts.push_back(ParseSeq());
    }
    return Alt(std::move(alts));
  }

  Expr ParseSeq() {
    std::vector<Expr> seq;
    while (More() && p_[i_] != '|' && p_[i_] != ')') {
      Expr atom = ParseAtom();
      seq.push_back(ParseQuantifier(std::move(atom)));
    }
    if (seq.empty()) return Empty();
    return Seq(std::move(seq));
  }

  Expr ParseQuantifier(Expr atom) {
    if (!More()) return atom;
    int lo = -1, hi = -1;
    const char c = p_[i_];
    if (c == '*') lo = 0, hi = -1, ++i_;
    else if (c == '+') lo = 1, hi = -1, ++i_;
    else if (c == '?') lo = 0, hi = 1, ++i_;
    else if (c == '{') {
      size_t j = i_ + 1;
      auto number = [&](int* v) {
        size_t start = j;
        long long x = 0;
        while (j < p_.size() && std::isdigit(static_cast<unsigned char>(p_[j]))) x = std::min(x * 10 + (p_[j++] - '0'), 100000LL);
        *v = static_cast<int>(x);
        return j > start;
      };
      if (!number(&lo)) return atom;  // a literal '{'
      hi = lo;
      if (j < p_.size() && p_[j] == ',') {
        ++j;
        if (!number(&hi)) hi = -1;
      }
      if (j >= p_.size() || p_[j] != '}') return atom;
      i_ = j + 1;
      if (hi >= 0 && hi < lo) {
        Fail("a quantifier {n,m} with m < n");
        return atom;
      }
      if (lo > 1000 || hi > 1000) {
        Fail("a quantifier over 1000 repetitions");
        return atom;
      }
    } else {
      return atom;
    }
    if (More() && p_[i_] == '?') ++i_;  // lazy: the same language
    return Repeat(std::move(atom), lo, hi);
  }

  // One code point of the pattern (UTF-8).
  uint32_t NextCodePoint() {
    const auto b = [&](size_t k) { return static_cast<uint8_t>(p_[k]); };
    const uint8_t c = b(i_);
    int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i_ + n > p_.size()) n = 1;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (b(i_ + k) & 0x3F);
    i_ += n;
    return cp;
  }

  static Intervals Digits() { return {{'0', '9'}}; }
  static Intervals Word() { return Normalize({{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}); }
  static Intervals Space() {
    return Normalize({{'\t', '\r'}, {' ', ' '}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
                      {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}});
  }

  // After a backslash: a class escape (\d, \w, \s and negations) or one code point.
  bool ParseEscape(Intervals* set, uint32_t* single) {
    if (i_ >= p_.size()) {
      Fail("a pattern ends with a backslash");
      return false;
    }
    const char c = p_[i_++];
    switch (c) {
      case 'd': *set = Digits(); return true;
      case 'D': *set = Complement(Digits()); return true;
      case 'w': *set = Word(); return true;
      case 'W': *set = Complement(Word()); return true;
      case 's': *set = Space(); return true;
      case 'S': *set = Complement(Space()); return true;
      case 't': *single = '\t'; return false;
      case 'n': *single = '\n'; return false;
      case 'r': *single = '\r'; return false;
      case 'f': *single = '\f'; return false;
      case 'v': *single = '\v'; return false;
      case '0': *single = 0; return false;
      case 'x':
      case 'u': {
        const size_t n = c == 'x' ? 2 : 4;
        if (i_ + n > p_.size()) {
          Fail("a short \\x or \\u escape");
          return false;
        }
        uint32_t v = 0;
        for (size_t k = 0; k < n; ++k) {
          const char h = p_[i_ + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) {
            Fail("a bad \\x or \\u escape");
            return false;
          }
          v = v * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        i_ += n;
        *single = v;
        return false;
      }
      default:
        if (std::isalnum(static_cast<unsigned char>(c))) {
          Fail(absl::StrCat("the escape \\", std::string(1, c), " (word boundaries and backreferences are not supported)"));
          return false;
        }
        --i_;
        *single = NextCodePoint();
        return false;
    }
  }

  Expr ParseClass() {  // after '['
    bool negate = false;
    if (More() && p_[i_] == '^') {
      negate = true;
      ++i_;
    }
    Intervals set;
    bool first = true;
    while (More() && (p_[i_] != ']' || first)) {
      first = false;
      uint32_t lo;
      if (p_[i_] == '\\') {
        ++i_;
        Intervals cls;
        if (ParseEscape(&cls, &lo)) {
          set.insert(set.end(), cls.begin(), cls.end());
          continue;
        }
      } else {
        lo = NextCodePoint();
      }
      uint32_t hi = lo;
      if (i_ + 1 < p_.size() && p_[i_] == '-' && p_[i_ + 1] != ']') {
        ++i_;
        if (p_[i_] == '\\') {
          ++i_;
          Intervals cls;
          if (ParseEscape(&cls, &hi)) {
            Fail("a class escape as a range end");
            return Empty();
          }
        } else {
          hi = NextCodePoint();
        }
        if (hi < lo) {
          Fail("a character range out of order");
          return Empty();
        }
      }
      set.emplace_back(lo, hi);
    }
    if (!More()) {
      Fail("an unterminated character class");
      return Empty();
    }
    ++i_;  // ']'
    set = Normalize(std::move(set));
    return JsonChars(negate ? Complement(set) : set);
  }

  Expr ParseAtom() {
    const char c = p_[i_];
    if (c == '(') {
      ++i_;
      if (i_ + 1 < p_.size() && p_[i_] == '?') {
        if (p_[i_ + 1] != ':') {
          Fail("lookaround and named groups are not supported");
          return Empty();
        }
        i_ += 2;
      }
      Expr inner = ParseAlt();
      if (!More() || p_[i_] != ')') {
        Fail("an unbalanced parenthesis");
        return Empty();
      }
      ++i_;
      return inner;
    }
    if (c == '[') {
      ++i_;
      return ParseClass();
    }
    if (c == '.') {
      ++i_;
      return JsonChars(Complement(Normalize({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}})));
    }
    if (c == '^' || c == '$') {
      Fail("anchors (^, $) inside the pattern are not supported, only at its ends");
      return Empty();
    }
    if (c == '*' || c == '+' || c == '?') {
      Fail("a quantifier without an atom");
      return Empty();
    }
    uint32_t cp;
    if (c == '\\') {
      ++i_;
      Intervals cls;
      if (ParseEscape(&cls, &cp)) return JsonChars(Normalize(cls));
    } else {
      cp = NextCodePoint();
    }
    return JsonChars({{cp, cp}});
  }

  std::string_view p_;
  size_t i_ = 0;
  Expr any_;
  std::string error_;
};

// ---- Integers and numbers ----

using Int = long long;
constexpr Int kMaxDigits = 16;
constexpr Int kIntCap = 9'999'999'999'999'999LL;  // 16 digits

Expr Digit() { return Range('0', '9'); }

// Decimal strings of equal length, a <= b digit-wise.
Expr SameLength(const std::string& a, const std::string& b) {
  if (a.empty()) return Empty();
  if (a.find_first_not_of('0') == std::string::npos && b.find_first_not_of('9') == std::string::npos) {
    return Repeat(Digit(), static_cast<int>(a.size()), static_cast<int>(a.size()));
  }
  if (a.size() == 1) return Range(static_cast<uint8_t>(a[0]), static_cast<uint8_t>(b[0]));
  if (a[0] == b[0]) return Seq({Lit(a.substr(0, 1)), SameLength(a.substr(1), b.substr(1))});
  const size_t rest = a.size() - 1;
  std::vector<Expr> alts;
  alts.push_back(Seq({Lit(a.substr(0, 1)), SameLength(a.substr(1), std::string(rest, '9'))}));
  if (a[0] + 1 <= b[0] - 1) {
    alts.push_back(Seq({Range(static_cast<uint8_t>(a[0] + 1), static_cast<uint8_t>(b[0] - 1)),
                        Repeat(Digit(), static_cast<int>(rest), static_cast<int>(rest))}));
  }
  alts.push_back(Seq({Lit(b.substr(0, 1)), SameLength(std::string(rest, '0'), b.substr(1))}));
  return Alt(std::move(alts));
}

// Non-negative integers in [a, b] written without leading zeros (b <= kIntCap).
Expr NonNegRange(Int a, Int b) {
  std::vector<Expr> alts;
  const std::string as = std::to_string(a), bs = std::to_string(b);
  for (size_t len = as.size(); len <= bs.size(); ++len) {
    const std::string lo = len == as.size() ? as : "1" + std::string(len - 1, '0');
    const std::string hi = len == bs.size() ? bs : std::string(len, '9');
    alts.push_back(SameLength(lo, hi));
  }
  return Alt(std::move(alts));
}

// Integers in [lo, hi] (either may be unbounded: +-kIntCap).
Expr IntegerRange(Int lo, Int hi) {
  std::vector<Expr> alts;
  if (lo < 0) alts.push_back(Seq({Lit("-"), NonNegRange(std::max<Int>(1, hi < 0 ? -hi : 1), -lo)}));
  if (hi >= 0) alts.push_back(NonNegRange(std::max<Int>(0, lo), hi));
  return Alt(std::move(alts));
}

Expr Fraction() { return Seq({Lit("."), Repeat(Digit(), 1, kMaxDigits)}); }
Expr NonZeroFraction() {
  return Seq({Lit("."), Repeat(Lit("0"), 0, kMaxDigits - 1), Range('1', '9'), Repeat(Digit(), 0, kMaxDigits - 1)});
}
Expr ZeroFraction() { return Seq({Lit("."), Repeat(Lit("0"), 1, kMaxDigits)}); }

Expr AnyNumber() {
  ByteSet e;
  e.set('e');
  e.set('E');
  ByteSet sign;
  sign.set('-');
  sign.set('+');
  return Seq({Opt(Lit("-")), Alt({Lit("0"), Seq({Range('1', '9'), Repeat(Digit(), 0, kMaxDigits - 1)})}), Opt(Fraction()),
              Opt(Seq({Bytes(e), Opt(Bytes(sign)), Repeat(Digit(), 1, 2)}))});
}

// Whitespace between tokens: one optional space. (Runs of newlines and
// indentation would let a model spend its tokens on layout, and multiply the
// grammar's nodes.)
Expr Ws() { return Opt(Lit(" ")); }

// ---- The compiler ----

struct Restart {};

class SchemaCompiler {
 public:
  SchemaCompiler(Grammar* g, const json& root, const std::set<std::string>& recursive)
      : g_(g), root_(root), recursive_(recursive) {}

  absl::StatusOr<Expr> Compile() { return Value(root_, "#"); }
  const std::set<std::string>& found_recursive() const { return found_; }

  int32_t ValueRule() {
    if (value_rule_ >= 0) return value_rule_;
    value_rule_ = g_->AddRule("json_value");
    const Expr v = Call(value_rule_);
    Expr member = Seq({String(Star(AnyJsonChar())), Ws(), Lit(":"), Ws(), v});
    Expr object = Seq({Lit("{"), Ws(), Opt(Seq({member, Star(Seq({Ws(), Lit(","), Ws(), member}))})), Ws(), Lit("}")});
    Expr array = Seq({Lit("["), Ws(), Opt(Seq({v, Star(Seq({Ws(), Lit(","), Ws(), v}))})), Ws(), Lit("]")});
    g_->Define(value_rule_, Alt({std::move(object), std::move(array), String(Star(AnyJsonChar())), AnyNumber(),
                                 Lit("true"), Lit("false"), Lit("null")}));
    return value_rule_;
  }

  Expr AnyObject() {
    const Expr v = Call(ValueRule());
    Expr member = Seq({String(Star(AnyJsonChar())), Ws(), Lit(":"), Ws(), v});
    return Seq({Lit("{"), Ws(), Opt(Seq({member, Star(Seq({Ws(), Lit(","), Ws(), member}))})), Ws(), Lit("}")});
  }

 private:
  static Expr String(Expr chars) { return Seq({Lit("\""), std::move(chars), Lit("\"")}); }

  // What a schema can match, as far as oneOf's disjointness needs: the JSON
  // kinds, the exact values of a const or enum, and for objects the const or
  // enum values of required properties (discriminators).
  enum Kind : uint32_t { kNull = 1, kBool = 2, kNumber = 4, kString = 8, kArray = 16, kObject = 32, kAnyKind = 63 };
  struct Shape {
    uint32_t kinds = kAnyKind;
    std::optional<std::vector<json>> values;
    std::map<std::string, std::vector<json>> tags;
  };

  static uint32_t KindOf(const json& v) {
    if (v.is_null()) return kNull;
    if (v.is_boolean()) return kBool;
    if (v.is_number()) return kNumber;
    if (v.is_string()) return kString;
    return v.is_array() ? kArray : kObject;
  }

  static std::optional<std::vector<json>> ValuesOf(const json& s) {
    if (!s.is_object()) return std::nullopt;
    if (s.contains("const")) return std::vector<json>{s["const"]};
    if (s.contains("enum") && s["enum"].is_array()) return std::vector<json>(s["enum"].begin(), s["enum"].end());
    return std::nullopt;
  }

  Shape ShapeOf(const json& s, int depth) {
    Shape sh;
    if (!s.is_object() || depth > 16) return sh;
    if (s.contains("$ref") && s["$ref"].is_string()) {
      absl::StatusOr<const json*> target = Resolve(s["$ref"].get<std::string>(), "");
      return target.ok() ? ShapeOf(**target, depth + 1) : sh;
    }
    if (auto v = ValuesOf(s)) {
      sh.kinds = 0;
      for (const json& x : *v) sh.kinds |= KindOf(x);
      sh.values = std::move(v);
      return sh;
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key) || !s[key].is_array()) continue;
      sh.kinds = 0;
      std::vector<json> all;
      bool all_values = true;
      for (const json& b : s[key]) {
        Shape bs = ShapeOf(b, depth + 1);
        sh.kinds |= bs.kinds;
        if (bs.values) all.insert(all.end(), bs.values->begin(), bs.values->end());
        else all_values = false;
      }
      if (all_values) sh.values = std::move(all);
      return sh;
    }
    if (s.contains("allOf") && s["allOf"].is_array() && s["allOf"].size() == 1) return ShapeOf(s["allOf"][0], depth + 1);
    static const std::map<std::string, uint32_t> kTypes = {{"null", kNull},     {"boolean", kBool}, {"integer", kNumber},
                                                           {"number", kNumber}, {"string", kString}, {"array", kArray},
                                                           {"object", kObject}};
    std::vector<std::string> types;
    if (s.contains("type") && s["type"].is_string()) types.push_back(s["type"].get<std::string>());
    if (s.contains("type") && s["type"].is_array()) {
      for (const json& t : s["type"]) {
        if (t.is_string()) types.push_back(t.get<std::string>());
      }
    }
    if (types.empty() && (s.contains("properties") || s.contains("additionalProperties"))) types.push_back("object");
    if (!types.empty()) {
      sh.kinds = 0;
      for (const std::string& t : types) sh.kinds |= kTypes.count(t) ? kTypes.at(t) : kAnyKind;
    }
    if (s.contains("nullable") && s["nullable"] == true) sh.kinds |= kNull;
    if ((sh.kinds & kObject) && s.contains("required") && s["required"].is_array() && s.contains("properties") &&
        s["properties"].is_object()) {
      for (const json& r : s["required"]) {
        if (!r.is_string() || !s["properties"].contains(r.get<std::string>())) continue;
        const json& p = s["properties"][r.get<std::string>()];
        if (auto v = ValuesOf(p)) sh.tags[r.get<std::string>()] = std::move(*v);
      }
    }
    return sh;
  }

  static bool NoCommonValue(const std::vector<json>& a, const std::vector<json>& b) {
    for (const json& x : a) {
      for (const json& y : b) {
        if (x == y) return false;
      }
    }
    return true;
  }

  // True when no value can match both shapes.
  static bool Disjoint(const Shape& a, const Shape& b) {
    const uint32_t common = a.kinds & b.kinds;
    if (common == 0) return true;
    if (a.values && b.values) return NoCommonValue(*a.values, *b.values);
    if (common == kObject) {
      for (const auto& [name, vals] : a.tags) {
        auto it = b.tags.find(name);
        if (it != b.tags.end() && NoCommonValue(vals, it->second)) return true;
      }
    }
    return false;
  }

  absl::Status Bad(const std::string& at, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("schema at ", at, ": ", why));
  }

  absl::StatusOr<const json*> Resolve(const std::string& ref, const std::string& at) {
    if (ref.empty() || ref[0] != '#') return Bad(at, absl::StrCat("$ref '", ref, "' is not a local reference (#...)"));
    const json* cur = &root_;
    if (ref == "#") return cur;
    if (ref.size() < 2 || ref[1] != '/') return Bad(at, absl::StrCat("$ref '", ref, "' is not a JSON pointer"));
    size_t pos = 2;
    while (pos <= ref.size()) {
      size_t next = ref.find('/', pos);
      if (next == std::string::npos) next = ref.size();
      std::string part = ref.substr(pos, next - pos);
      // JSON pointer escapes.
      for (size_t k; (k = part.find("~1")) != std::string::npos;) part.replace(k, 2, "/");
      for (size_t k; (k = part.find("~0")) != std::string::npos;) part.replace(k, 2, "~");
      if (cur->is_object() && cur->contains(part)) {
        cur = &(*cur)[part];
      } else if (cur->is_array() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) &&
                 std::stoul(part) < cur->size()) {
        cur = &(*cur)[std::stoul(part)];
      } else {
        return Bad(at, absl::StrCat("$ref '", ref, "' points to nothing"));
      }
      pos = next + 1;
    }
    return cur;
  }

  absl::StatusOr<Expr> Value(const json& s, const std::string& at) {
    if (++depth_ > 64) return Bad(at, "nesting deeper than 64 levels");
    absl::StatusOr<Expr> e = ValueInner(s, at);
    --depth_;
    return e;
  }

  absl::StatusOr<Expr> ValueInner(const json& s, const std::string& at) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return Call(ValueRule());
      return Bad(at, "the schema false admits no value");
    }
    if (!s.is_object()) return Bad(at, "a schema must be an object or a boolean");
    static const std::set<std::string> kIgnored = {"title", "description", "default", "examples", "$schema", "$id",
                                                   "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
                                                   "definitions", "nullable", "strict", "name", "contentMediaType",
                                                   "contentEncoding"};
    static const std::set<std::string> kKnown = {"type", "properties", "required", "additionalProperties", "items",
                                                 "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
                                                 "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
                                                 "exclusiveMaximum", "enum", "const", "anyOf", "oneOf", "allOf",
                                                 "$ref"};
    for (const auto& [k, v] : s.items()) {
      if (!kIgnored.count(k) && !kKnown.count(k)) {
        return Bad(at, absl::StrCat("the keyword '", k, "' is not supported"));
      }
    }
    const bool nullable = s.contains("nullable") && s["nullable"] == true;
    absl::StatusOr<Expr> e = NonNull(s, at);
    if (!e.ok() || !nullable) return e;
    return Alt({std::move(*e), Lit("null")});
  }

  absl::StatusOr<Expr> NonNull(const json& s, const std::string& at) {
    if (s.contains("$ref")) {
      if (!s["$ref"].is_string()) return Bad(at, "$ref must be a string");
      const std::string ref = s["$ref"].get<std::string>();
      if (s.size() > 1) {
        for (const auto& [k, v] : s.items()) {
          static const std::set<std::string> kAnnotations = {"$ref", "title", "description", "default", "examples",
                                                             "$comment", "deprecated", "readOnly", "writeOnly",
                                                             "$defs", "definitions", "$schema", "$id"};
          if (!kAnnotations.count(k)) return Bad(at, absl::StrCat("'", k, "' beside $ref is not supported"));
        }
      }
      ASSIGN_OR_RETURN(const json* target, Resolve(ref, at));
      if (recursive_.count(ref)) {
        auto it = ref_rules_.find(ref);
        if (it != ref_rules_.end()) return Call(it->second);
        const int32_t rule = g_->AddRule(absl::StrCat("ref ", ref));
        ref_rules_[ref] = rule;
        absl::StatusOr<Expr> body = Value(*target, ref);
        if (!body.ok()) return body.status();
        g_->Define(rule, std::move(*body));
        return Call(rule);
      }
      if (expanding_.count(ref)) {
        found_.insert(ref);
        throw Restart{};
      }
      expanding_.insert(ref);
      absl::StatusOr<Expr> body = Value(*target, ref);
      expanding_.erase(ref);
      return body;
    }
    if (s.contains("const")) return Lit(s["const"].dump());
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty()) return Bad(at, "enum must be a non-empty array");
      std::vector<Expr> alts;
      for (const json& v : s["enum"]) alts.push_back(Lit(v.dump()));
      return Alt(std::move(alts));
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      const json& list = s[key];
      if (!list.is_array() || list.empty()) return Bad(at, absl::StrCat(key, " must be a non-empty array"));
      // oneOf is anyOf when no two branches can match the same value; that is
      // the only oneOf constrained (exactly one match cannot be a grammar).
      if (std::string(key) == "oneOf") {
        std::vector<Shape> shapes;
        for (const json& branch : list) shapes.push_back(ShapeOf(branch, 0));
        for (size_t i = 0; i < shapes.size(); ++i) {
          for (size_t j = i + 1; j < shapes.size(); ++j) {
            if (!Disjoint(shapes[i], shapes[j])) {
              return Bad(at, absl::StrCat("oneOf branches ", i, " and ", j,
                                          " may both match a value; oneOf is supported when its branches cannot "
                                          "overlap (different types, different const or enum values, or a required "
                                          "property with different const or enum values): use anyOf otherwise"));
            }
          }
        }
      }
      std::vector<Expr> alts;
      for (size_t i = 0; i < list.size(); ++i) {
        json branch = list[i];
        // Sibling keywords apply to every branch (a common pydantic shape: type beside anyOf is rare; merge simply).
        absl::StatusOr<Expr> e = Value(branch, absl::StrCat(at, "/", key, "/", i));
        if (!e.ok()) return e.status();
        alts.push_back(std::move(*e));
      }
      return Alt(std::move(alts));
    }
    if (s.contains("allOf")) {
      const json& list = s["allOf"];
      if (!list.is_array() || list.size() != 1) return Bad(at, "allOf is supported with exactly one schema");
      return Value(list[0], at + "/allOf/0");
    }
    std::vector<std::string> types;
    if (s.contains("type")) {
      if (s["type"].is_string()) {
        types.push_back(s["type"].get<std::string>());
      } else if (s["type"].is_array() && !s["type"].empty()) {
        for (const json& t : s["type"]) {
          if (!t.is_string()) return Bad(at, "type must be a string or an array of strings");
          types.push_back(t.get<std::string>());
        }
      } else {
        return Bad(at, "type must be a string or an array of strings");
      }
    } else if (s.contains("properties") || s.contains("additionalProperties")) {
      types.push_back("object");
    } else if (s.contains("items") || s.contains("prefixItems")) {
      types.push_back("array");
    } else if (s.contains("pattern") || s.contains("minLength") || s.contains("maxLength") || s.contains("format")) {
      types.push_back("string");
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") ||
               s.contains("exclusiveMaximum")) {
      types.push_back("number");
    } else {
      return Call(ValueRule());
    }
    std::vector<Expr> alts;
    for (const std::string& t : types) {
      absl::StatusOr<Expr> e = OfType(s, t, at);
      if (!e.ok()) return e.status();
      alts.push_back(std::move(*e));
    }
    return Alt(std::move(alts));
  }

  absl::StatusOr<Expr> OfType(const json& s, const std::string& type, const std::string& at) {
    if (type == "null") return Lit("null");
    if (type == "boolean") return Alt({Lit("true"), Lit("false")});
    if (type == "string") return StringOf(s, at);
    if (type == "integer") return IntegerOf(s, at);
    if (type == "number") return NumberOf(s, at);
    if (type == "array") return ArrayOf(s, at);
    if (type == "object") return ObjectOf(s, at);
    return Bad(at, absl::StrCat("unknown type '", type, "'"));
  }

  absl::StatusOr<int> Count(const json& s, const char* key, const std::string& at, int fallback) {
    if (!s.contains(key)) return fallback;
    if (!s[key].is_number_integer() || s[key].get<long long>() < 0) {
      return Bad(at, absl::StrCat(key, " must be a non-negative integer"));
    }
    return static_cast<int>(std::min<long long>(s[key].get<long long>(), 1'000'000));
  }

  absl::StatusOr<Expr> StringOf(const json& s, const std::string& at) {
    ASSIGN_OR_RETURN(const int min_len, Count(s, "minLength", at, 0));
    ASSIGN_OR_RETURN(const int max_len, Count(s, "maxLength", at, -1));
    if (max_len >= 0 && max_len < min_len) return Bad(at, "maxLength is below minLength");
    const bool has_pattern = s.contains("pattern");
    std::string format = s.contains("format") && s["format"].is_string() ? s["format"].get<std::string>() : "";
    static const std::map<std::string, std::string> kFormats = {
        {"date", "^[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))$"},
        {"time", "^(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"},
        {"date-time", "^[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"},
        {"uuid", "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
        {"ipv4", "^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"},
        {"email", "^[a-z0-9](?:[a-z0-9._+-]{0,30}[a-z0-9])?@[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?(?:\\.[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?){0,3}\\.[a-z]{2,10}$"},
    };
    std::string pattern;
    if (has_pattern) {
      if (!s["pattern"].is_string()) return Bad(at, "pattern must be a string");
      pattern = s["pattern"].get<std::string>();
    } else if (auto it = kFormats.find(format); it != kFormats.end()) {
      pattern = it->second;
    }
    if (!pattern.empty() || has_pattern) {
      if (s.contains("minLength") || s.contains("maxLength") || (has_pattern && kFormats.count(format))) {
        return Bad(at, "a pattern or format together with minLength, maxLength or another format is not supported");
      }
      RegexParser rp(pattern, AnyJsonChar());
      absl::StatusOr<Expr> e = rp.Parse();
      if (!e.ok()) return Bad(at, absl::StrCat("pattern '", pattern, "': ", e.status().message()));
      return String(std::move(*e));
    }
    if (max_len > 100'000) return String(Repeat(AnyJsonChar(), min_len, -1));
    return String(Repeat(AnyJsonChar(), min_len, max_len));
  }

  // A bound of `key` as a double, if present.
  absl::StatusOr<std::optional<double>> Bound(const json& s, const char* key, const std::string& at) {
    if (!s.contains(key)) return std::optional<double>();
    if (!s[key].is_number()) return Bad(at, absl::StrCat(key, " must be a number"));
    return std::optional<double>(s[key].get<double>());
  }

  absl::StatusOr<Expr> IntegerOf(const json& s, const std::string& at) {
    ASSIGN_OR_RETURN(auto mn, Bound(s, "minimum", at));
    ASSIGN_OR_RETURN(auto mx, Bound(s, "maximum", at));
    ASSIGN_OR_RETURN(auto xmn, Bound(s, "exclusiveMinimum", at));
    ASSIGN_OR_RETURN(auto xmx, Bound(s, "exclusiveMaximum", at));
    double lo = -static_cast<double>(kIntCap), hi = static_cast<double>(kIntCap);
    if (mn) lo = std::max(lo, std::ceil(*mn));
    if (xmn) lo = std::max(lo, std::floor(*xmn) + 1);
    if (mx) hi = std::min(hi, std::floor(*mx));
    if (xmx) hi = std::min(hi, std::ceil(*xmx) - 1);
    if (lo > hi) return Bad(at, "the bounds admit no integer");
    lo = std::max(lo, -static_cast<double>(kIntCap));
    hi = std::min(hi, static_cast<double>(kIntCap));
    return IntegerRange(static_cast<Int>(lo), static_cast<Int>(hi));
  }

  absl::StatusOr<Expr> NumberOf(const json& s, const std::string& at) {
    ASSIGN_OR_RETURN(auto mn, Bound(s, "minimum", at));
    ASSIGN_OR_RETURN(auto mx, Bound(s, "maximum", at));
    ASSIGN_OR_RETURN(auto xmn, Bound(s, "exclusiveMinimum", at));
    ASSIGN_OR_RETURN(auto xmx, Bound(s, "exclusiveMaximum", at));
    if (!mn && !mx && !xmn && !xmx) return AnyNumber();
    if ((mn && xmn) || (mx && xmx)) return Bad(at, "both an inclusive and an exclusive bound on one side");
    auto integral = [](const std::optional<double>& v) { return !v || (std::floor(*v) == *v && std::fabs(*v) < 1e15); };
    const std::optional<double> lo = mn ? mn : xmn, hi = mx ? mx : xmx;
    if (!integral(lo) || !integral(hi) || (lo && *lo < 0) || (hi && *hi < 0)) {
      return Bad(at, "bounds on a number are supported when they are integers and not negative "
                     "(use type integer, or widen the bounds)");
    }
    if (lo && hi && *lo > *hi) return Bad(at, "the bounds admit no number");
    std::vector<Expr> alts;
    // Without a lower bound every negative number is allowed.
    if (!lo) alts.push_back(Seq({Lit("-"), Alt({Seq({Lit("0"), NonZeroFraction()}),
                                                Seq({NonNegRange(1, kIntCap), Opt(Fraction())})})}));
    const Int a = lo ? static_cast<Int>(*lo) : 0, b = hi ? static_cast<Int>(*hi) : kIntCap;
    const bool a_ex = xmn.has_value(), b_ex = xmx.has_value();
    // Integer part i and fraction f: value in [a, b] with the ends as the bounds say.
    if (a_ex) alts.push_back(Seq({NonNegRange(a, a), NonZeroFraction()}));  // a < x < a + 1
    else alts.push_back(Seq({NonNegRange(a, a), Opt(Fraction())}));
    if (a + 1 <= b - 1) alts.push_back(Seq({NonNegRange(a + 1, b - 1), Opt(Fraction())}));
    if (b > a && !b_ex) alts.push_back(Seq({NonNegRange(b, b), Opt(ZeroFraction())}));  // b itself
    // a == b: only a itself (with zero fraction) unless an end is exclusive.
    if (b == a) {
      alts.clear();
      if (a_ex || b_ex) return Bad(at, "the bounds admit no number");
      alts.push_back(Seq({NonNegRange(a, a), Opt(ZeroFraction())}));
    }
    return Alt(std::move(alts));
  }

  absl::StatusOr<Expr> ArrayOf(const json& s, const std::string& at) {
    ASSIGN_OR_RETURN(const int min_items, Count(s, "minItems", at, 0));
    ASSIGN_OR_RETURN(int max_items, Count(s, "maxItems", at, -1));
    if (max_items >= 0 && max_items < min_items) return Bad(at, "maxItems is below minItems");
    std::vector<Expr> prefix;
    if (s.contains("prefixItems")) {
      if (!s["prefixItems"].is_array()) return Bad(at, "prefixItems must be an array");
      for (size_t i = 0; i < s["prefixItems"].size(); ++i) {
        absl::StatusOr<Expr> e = Value(s["prefixItems"][i], absl::StrCat(at, "/prefixItems/", i));
        if (!e.ok()) return e.status();
        prefix.push_back(std::move(*e));
      }
    }
    std::optional<Expr> item;
    bool items_allowed = true;
    if (s.contains("items")) {
      if (s["items"] == false) {
        items_allowed = false;
      } else {
        absl::StatusOr<Expr> e = Value(s["items"], at + "/items");
        if (!e.ok()) return e.status();
        item = std::move(*e);
      }
    } else {
      item = Call(ValueRule());
    }
    const Expr sep = Seq({Ws(), Lit(","), Ws()});
    // Element k (0-based): prefix[k] or the item schema.
    const int np = static_cast<int>(prefix.size());
    if (!items_allowed) max_items = max_items < 0 ? np : std::min(max_items, np);
    if (min_items > np && !items_allowed) return Bad(at, "minItems exceeds prefixItems with items false");
    // Build from the end: tail(k) = what may follow after k elements.
    const int cap = max_items < 0 ? -1 : max_items;
    if (cap > 10'000) return Bad(at, "maxItems over 10000 is not supported (omit it)");
    // After the prefix, extra items: between max(0, min-np) and cap-np (or unbounded).
    const int extra_min = std::max(0, min_items - np);
    const int extra_max = cap < 0 ? -1 : std::max(0, cap - np);
    if (item && extra_max > 16) {
      // Many copies: the item schema as one rule, called.
      const int32_t rule = g_->AddRule(absl::StrCat("items ", at));
      g_->Define(rule, std::move(*item));
      item = Call(rule);
    }
    std::optional<Expr> extra;  // ("," item){extra_min, extra_max} after at least one element
    if (item && extra_max != 0) extra = Repeat(Seq({sep, *item}), extra_min, extra_max);
    // Elements: p0 ("," p1 ( "," p2 ... )?)? then extras, with at least min_items in all.
    // Nest from the back: after element k (k < np), the rest is optional unless k + 1 < min_items.
    std::function<Expr(int)> after = [&](int k) -> Expr {
      // Elements k+1.. follow element k.
      if (k + 1 < np) {
        Expr next = Seq({sep, prefix[k + 1], after(k + 1)});
        return k + 1 < min_items ? next : Opt(std::move(next));
      }
      if (!extra) return Empty();
      return *extra;
    };
    Expr body;
    if (np > 0) {
      Expr first = Seq({prefix[0], after(0)});
      body = min_items > 0 ? std::move(first) : Opt(std::move(first));
    } else if (item && extra_max != 0) {
      // No prefix: item ("," item){min-1, max-1}.
      Expr list = Seq({*item, Repeat(Seq({sep, *item}), std::max(0, min_items - 1), cap < 0 ? -1 : cap - 1)});
      body = min_items > 0 ? std::move(list) : Opt(std::move(list));
    } else {
      if (min_items > 0) return Bad(at, "minItems admits no array");
      body = Empty();
    }
    return Seq({Lit("["), Ws(), std::move(body), Ws(), Lit("]")});
  }

  absl::StatusOr<Expr> ObjectOf(const json& s, const std::string& at) {
    const json empty = json::object();
    const json& props = s.contains("properties") ? s["properties"] : empty;
    if (!props.is_object()) return Bad(at, "properties must be an object");
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) return Bad(at, "required must be an array of names");
      for (const json& r : s["required"]) {
        if (!r.is_string()) return Bad(at, "required must be an array of names");
        if (!props.contains(r.get<std::string>())) {
          return Bad(at, absl::StrCat("required property '", r.get<std::string>(), "' is not in properties"));
        }
        required.insert(r.get<std::string>());
      }
    }
    // Additional properties: absent or false -> none; true or a schema -> allowed after the declared ones.
    std::optional<Expr> extra_value;
    if (s.contains("additionalProperties")) {
      const json& ap = s["additionalProperties"];
      if (ap.is_boolean()) {
        if (ap.get<bool>()) extra_value = Call(ValueRule());
      } else {
        absl::StatusOr<Expr> e = Value(ap, at + "/additionalProperties");
        if (!e.ok()) return e.status();
        extra_value = std::move(*e);
      }
    } else if (props.empty()) {
      extra_value = Call(ValueRule());  // {"type": "object"}: any object
    }
    struct Member {
      Expr kv;
      bool required;
    };
    std::vector<Member> members;
    for (const auto& [name, sub] : props.items()) {
      absl::StatusOr<Expr> v = Value(sub, absl::StrCat(at, "/properties/", name));
      if (!v.ok()) return v.status();
      members.push_back({Seq({Lit(json(name).dump()), Ws(), Lit(":"), Ws(), std::move(*v)}), required.count(name) > 0});
    }
    const Expr sep = Seq({Ws(), Lit(","), Ws()});
    std::optional<Expr> extras;
    if (extra_value) {
      // Further names are raw strings other than the declared ones (so a
      // declared property keeps its own schema).
      std::vector<std::vector<uint32_t>> taken;
      for (const auto& [name, sub] : props.items()) {
        const std::vector<uint32_t> cps = DecodeCodePoints(name);
        const Intervals raw = RawChars();
        const bool representable = std::all_of(cps.begin(), cps.end(), [&](uint32_t c) {
          return std::any_of(raw.begin(), raw.end(), [&](const auto& iv) { return c >= iv.first && c <= iv.second; });
        });
        if (representable) taken.push_back(cps);
      }
      Expr key = taken.empty() ? String(Star(AnyJsonChar())) : String(RawStringNotIn(taken));
      extras = Seq({std::move(key), Ws(), Lit(":"), Ws(), *extra_value});
    }
    // Members in order; each optional one may be left out. rest(i, has_prev):
    // the members from i on, with a separator first when one was written.
    const int n = static_cast<int>(members.size());
    int optional_count = 0;
    for (const Member& m : members) optional_count += !m.required;
    const bool use_rules = optional_count > 6;
    std::map<std::pair<int, bool>, int32_t> rules;
    std::function<Expr(int, bool)> rest = [&](int i, bool has_prev) -> Expr {
      if (i == n) {
        if (!extras) return Empty();
        Expr more = Star(Seq({sep, *extras}));
        if (has_prev) return more;
        return Opt(Seq({*extras, std::move(more)}));
      }
      if (use_rules) {
        auto key = std::make_pair(i, has_prev);
        if (auto it = rules.find(key); it != rules.end()) return Call(it->second);
        const int32_t rule = g_->AddRule(absl::StrCat("members ", at, " ", i, has_prev ? "+" : ""));
        rules[key] = rule;
        g_->Define(rule, RestBody(i, has_prev, members[i].kv, members[i].required, sep, rest));
        return Call(rule);
      }
      return RestBody(i, has_prev, members[i].kv, members[i].required, sep, rest);
    };
    return Seq({Lit("{"), Ws(), rest(0, false), Ws(), Lit("}")});
  }

  static Expr RestBody(int i, bool has_prev, const Expr& kv, bool required, const Expr& sep,
                       const std::function<Expr(int, bool)>& rest) {
    Expr with = has_prev ? Seq({sep, kv, rest(i + 1, true)}) : Seq({kv, rest(i + 1, true)});
    if (required) return with;
    return Alt({std::move(with), rest(i + 1, has_prev)});
  }

  Grammar* g_;
  const json& root_;
  const std::set<std::string>& recursive_;
  std::set<std::string> found_, expanding_;
  std::map<std::string, int32_t> ref_rules_;
  int32_t value_rule_ = -1;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Expr> JsonSchemaExpr(Grammar* g, const json& schema) {
  std::set<std::string> recursive;
  for (int attempt = 0; attempt < 32; ++attempt) {
    Grammar trial = *g;
    SchemaCompiler c(&trial, schema, recursive);
    try {
      absl::StatusOr<Expr> e = c.Compile();
      if (!e.ok()) return e.status();
      *g = std::move(trial);
      return e;
    } catch (const Restart&) {
      recursive.insert(c.found_recursive().begin(), c.found_recursive().end());
    }
  }
  return absl::InvalidArgumentError("schema: too many recursive references");
}

Expr AnyJsonObject(Grammar* g) {
  static const json kEmpty = json::object();
  static const std::set<std::string> kNone;
  SchemaCompiler c(g, kEmpty, kNone);
  return c.AnyObject();
}

absl::StatusOr<Grammar> JsonSchemaGrammar(const json& schema, size_t max_nodes) {
  Grammar g;
  g.set_max_nodes(max_nodes);
  const int32_t root = g.AddRule("root");
  absl::StatusOr<Expr> e = JsonSchemaExpr(&g, schema);
  if (!e.ok()) return e.status();
  g.Define(root, std::move(*e));
  if (absl::Status st = g.Compile(root); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("schema: ", st.message()));
  }
  return g;
}

}  // namespace moeserve::grammar
