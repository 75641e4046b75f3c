#include "router/grammar/grammar.h"

#include <functional>
#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace moeserve::grammar {

Expr Empty() { return Expr{}; }

Expr Bytes(const ByteSet& set) {
  Expr e;
  e.kind = Expr::Kind::kBytes;
  e.bytes = set;
  return e;
}

Expr Range(uint8_t lo, uint8_t hi) {
  ByteSet s;
  for (int b = lo; b <= hi; ++b) s.set(b);
  return Bytes(s);
}

Expr Lit(std::string_view text) {
  std::vector<Expr> parts;
  for (char c : text) {
    ByteSet s;
    s.set(static_cast<uint8_t>(c));
    parts.push_back(Bytes(s));
  }
  return Seq(std::move(parts));
}

Expr Special(int32_t token_id) {
  Expr e;
  e.kind = Expr::Kind::kSpecial;
  e.value = token_id;
  return e;
}

Expr Seq(std::vector<Expr> parts) {
  if (parts.size() == 1) return std::move(parts[0]);
  Expr e;
  e.kind = Expr::Kind::kSeq;
  e.kids = std::make_shared<const std::vector<Expr>>(std::move(parts));
  return e;
}

Expr Alt(std::vector<Expr> options) {
  if (options.size() == 1) return std::move(options[0]);
  Expr e;
  e.kind = Expr::Kind::kAlt;
  e.kids = std::make_shared<const std::vector<Expr>>(std::move(options));
  return e;
}

Expr Repeat(Expr x, int min, int max) {
  Expr e;
  e.kind = Expr::Kind::kRepeat;
  e.min = min;
  e.max = max;
  std::vector<Expr> kid;
  kid.push_back(std::move(x));
  e.kids = std::make_shared<const std::vector<Expr>>(std::move(kid));
  return e;
}

Expr Call(int32_t rule) {
  Expr e;
  e.kind = Expr::Kind::kCall;
  e.value = rule;
  return e;
}

namespace {

// UTF-8 byte sequences of the code points in [lo, hi], split so that each
// sequence is a product of byte ranges (RE2's construction).
std::string EncodeUtf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

void Utf8Ranges(uint32_t lo, uint32_t hi, std::vector<Expr>* out) {
  if (lo > hi) return;
  for (uint32_t b : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= b && b < hi) {
      Utf8Ranges(lo, b, out);
      Utf8Ranges(b + 1, hi, out);
      return;
    }
  }
  if (hi < 0x80) {
    out->push_back(Range(static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)));
    return;
  }
  const int n = static_cast<int>(EncodeUtf8(lo).size());
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        Utf8Ranges(lo, lo | m, out);
        Utf8Ranges((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        Utf8Ranges(lo, (hi & ~m) - 1, out);
        Utf8Ranges(hi & ~m, hi, out);
        return;
      }
    }
  }
  const std::string a = EncodeUtf8(lo), b = EncodeUtf8(hi);
  std::vector<Expr> seq;
  for (int i = 0; i < n; ++i) seq.push_back(Range(static_cast<uint8_t>(a[i]), static_cast<uint8_t>(b[i])));
  out->push_back(Seq(std::move(seq)));
}

}  // namespace

Expr CodePoints(uint32_t lo, uint32_t hi) {
  std::vector<Expr> out;
  if (lo <= hi && lo < 0xD800) Utf8Ranges(lo, std::min<uint32_t>(hi, 0xD7FF), &out);
  if (hi > 0xDFFF) Utf8Ranges(std::max<uint32_t>(lo, 0xE000), std::min<uint32_t>(hi, 0x10FFFF), &out);
  return Alt(std::move(out));
}

int32_t Grammar::AddRule(std::string name) {
  names_.push_back(std::move(name));
  bodies_.emplace_back();
  defined_.push_back(false);
  return static_cast<int32_t>(names_.size() - 1);
}

void Grammar::Define(int32_t rule, Expr body) {
  bodies_[rule] = std::move(body);
  defined_[rule] = true;
}

int32_t Grammar::NewNode() {
  if (nodes_.size() >= max_nodes_) too_large_ = true;
  nodes_.emplace_back();
  return static_cast<int32_t>(nodes_.size() - 1);
}

void Grammar::AddEdge(int32_t from, Edge::Kind kind, int32_t arg, int32_t to) {
  nodes_[from].edges.push_back(Edge{kind, arg, to});
}

int32_t Grammar::Build(const Expr& e, int32_t from) {
  if (too_large_) return from;
  switch (e.kind) {
    case Expr::Kind::kEmpty: return from;
    case Expr::Kind::kBytes: {
      auto [it, fresh] = byte_set_index_.try_emplace(e.bytes, static_cast<int32_t>(byte_sets_.size()));
      if (fresh) byte_sets_.push_back(e.bytes);
      const int32_t idx = it->second;
      const int32_t to = NewNode();
      AddEdge(from, Edge::kBytes, idx, to);
      return to;
    }
    case Expr::Kind::kSpecial: {
      const int32_t to = NewNode();
      AddEdge(from, Edge::kSpecial, e.value, to);
      return to;
    }
    case Expr::Kind::kCall: {
      const int32_t to = NewNode();
      AddEdge(from, Edge::kCall, e.value, to);
      return to;
    }
    case Expr::Kind::kSeq: {
      int32_t cur = from;
      for (const Expr& k : *e.kids) cur = Build(k, cur);
      return cur;
    }
    case Expr::Kind::kAlt: {
      const int32_t end = NewNode();
      for (const Expr& k : *e.kids) {
        const int32_t s = NewNode();
        AddEdge(from, Edge::kEps, 0, s);
        AddEdge(Build(k, s), Edge::kEps, 0, end);
      }
      return end;
    }
    case Expr::Kind::kRepeat: {
      const Expr& k = (*e.kids)[0];
      int32_t cur = BuildCopies(k, from, e.min, -1);
      if (e.max < 0) {
        const int32_t loop = NewNode();
        AddEdge(cur, Edge::kEps, 0, loop);
        AddEdge(Build(k, loop), Edge::kEps, 0, loop);
        return loop;
      }
      const int32_t end = NewNode();
      cur = BuildCopies(k, cur, e.max - e.min, end);
      AddEdge(cur, Edge::kEps, 0, end);
      return end;
    }
  }
  return from;
}

int32_t Grammar::BuildCopies(const Expr& e, int32_t cur, int count, int32_t exit) {
  const int32_t first = static_cast<int32_t>(nodes_.size());
  int32_t size = -1;
  bool uniform = true;
  for (int i = 0; i < count && !too_large_; ++i) {
    const int32_t before = static_cast<int32_t>(nodes_.size());
    if (exit >= 0) AddEdge(cur, Edge::kEps, 0, exit);
    cur = Build(e, cur);
    const int32_t made = static_cast<int32_t>(nodes_.size()) - before;
    if (size < 0) size = made;
    uniform = uniform && made == size;
  }
  if (count > 1 && size > 0 && uniform && !too_large_) copies_.push_back(Copies{first, size, count});
  return cur;
}

absl::Status Grammar::Compile(int32_t root) {
  for (int32_t r = 0; r < num_rules(); ++r) {
    if (!defined_[r]) return absl::InvalidArgumentError(absl::StrCat("grammar rule '", names_[r], "' is not defined"));
  }
  nodes_.clear();
  byte_sets_.clear();
  byte_set_index_.clear();
  copies_.clear();
  rule_start_.assign(names_.size(), -1);
  for (int32_t r = 0; r < num_rules(); ++r) {
    rule_start_[r] = NewNode();
    const int32_t end = Build(bodies_[r], rule_start_[r]);
    if (too_large_) break;
    nodes_[end].accept = true;
  }
  if (too_large_) {
    return absl::InvalidArgumentError(
        absl::StrCat("the grammar is too large (over ", max_nodes_, " states); use fewer or smaller bounds"));
  }
  root_ = root;
  for (Node& n : nodes_) {
    for (const Edge& e : n.edges) {
      if (e.kind == Edge::kBytes || e.kind == Edge::kSpecial) n.consumes = true;
    }
  }
  // Epsilon closures.
  std::vector<int32_t> seen(nodes_.size(), -1), stack;
  for (int32_t s = 0; s < static_cast<int32_t>(nodes_.size()); ++s) {
    stack.assign(1, s);
    seen[s] = s;
    std::vector<int32_t>& cl = nodes_[s].closure;
    while (!stack.empty()) {
      const int32_t n = stack.back();
      stack.pop_back();
      bool keep = nodes_[n].accept;
      for (const Edge& e : nodes_[n].edges) {
        if (e.kind != Edge::kEps) {
          keep = true;
        } else if (seen[e.to] != s) {
          seen[e.to] = s;
          stack.push_back(e.to);
        }
      }
      if (keep) cl.push_back(n);
    }
  }
  // Rules that can end without consuming a symbol.
  std::vector<bool> nullable(names_.size(), false);
  auto reaches_end = [&](int32_t r, std::vector<int32_t>* calls) {
    // Walks eps edges and calls of nullable rules from the rule's start;
    // `calls` collects every rule called at such a position.
    std::vector<int32_t> st{rule_start_[r]};
    std::unordered_map<int32_t, bool> visited;
    bool end = false;
    while (!st.empty()) {
      const int32_t n = st.back();
      st.pop_back();
      if (visited[n]) continue;
      visited[n] = true;
      if (nodes_[n].accept) end = true;
      for (const Edge& e : nodes_[n].edges) {
        if (e.kind == Edge::kEps) st.push_back(e.to);
        if (e.kind == Edge::kCall) {
          if (calls) calls->push_back(e.arg);
          if (nullable[e.arg]) st.push_back(e.to);
        }
      }
    }
    return end;
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < num_rules(); ++r) {
      if (!nullable[r] && reaches_end(r, nullptr)) nullable[r] = changed = true;
    }
  }
  // Left recursion: a rule that can call itself before consuming anything.
  std::vector<std::vector<int32_t>> first_calls(names_.size());
  for (int32_t r = 0; r < num_rules(); ++r) reaches_end(r, &first_calls[r]);
  std::vector<int> color(names_.size(), 0);
  std::function<bool(int32_t)> cyclic = [&](int32_t r) {
    color[r] = 1;
    for (int32_t c : first_calls[r]) {
      if (color[c] == 1 || (color[c] == 0 && cyclic(c))) return true;
    }
    color[r] = 2;
    return false;
  };
  for (int32_t r = 0; r < num_rules(); ++r) {
    if (color[r] == 0 && cyclic(r)) {
      return absl::InvalidArgumentError(absl::StrCat("the grammar is left-recursive at rule '", names_[r],
                                                     "' (it can call itself before consuming anything)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moeserve::grammar
