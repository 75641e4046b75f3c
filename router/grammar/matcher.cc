#include "router/grammar/matcher.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <numeric>
#include <thread>

#include "router/text/tokenizer.h"

namespace moeserve::grammar {

// ---- TokenTable ----

std::shared_ptr<const TokenTable> TokenTable::FromTokenizer(const text::Tokenizer& tok) {
  const int32_t n = static_cast<int32_t>(tok.vocab_size());
  std::vector<std::string> bytes(n);
  std::vector<bool> special(n, false);
  for (int32_t id = 0; id < n; ++id) {
    if (id >= tok.num_ordinary()) {
      special[id] = true;
      continue;
    }
    if (const std::string* b = tok.TokenBytes(id)) bytes[id] = *b;
  }
  return std::make_shared<TokenTable>(std::move(bytes), std::move(special));
}

TokenTable::TokenTable(std::vector<std::string> bytes, std::vector<bool> special)
    : bytes_(std::move(bytes)), special_(std::move(special)) {
  special_.resize(bytes_.size(), false);
  for (int32_t id = 0; id < vocab_size(); ++id) {
    if (!special_[id] && !bytes_[id].empty()) sorted_.push_back(id);
  }
  std::sort(sorted_.begin(), sorted_.end(), [&](int32_t a, int32_t b) { return bytes_[a] < bytes_[b]; });
  lcp_.assign(sorted_.size(), 0);
  for (size_t i = 1; i < sorted_.size(); ++i) {
    const std::string &a = bytes_[sorted_[i - 1]], &b = bytes_[sorted_[i]];
    size_t k = 0;
    while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
    lcp_[i] = static_cast<uint16_t>(std::min<size_t>(k, 65535));
  }
  sorted_offset_.push_back(0);
  for (int32_t id : sorted_) {
    max_symbols_ = std::max(max_symbols_, static_cast<int32_t>(bytes_[id].size()));
    sorted_text_ += bytes_[id];
    sorted_offset_.push_back(static_cast<uint32_t>(sorted_text_.size()));
  }
  for (int b = 0, i = 0; b <= 256; ++b) {
    while (i < static_cast<int>(sorted_.size()) && static_cast<uint8_t>(bytes_[sorted_[i]][0]) < b) ++i;
    first_byte_begin_[b] = b == 256 ? static_cast<int32_t>(sorted_.size()) : i;
  }
}

// ---- GrammarRunner ----

namespace {
uint64_t Pack(int32_t node, int32_t frame) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(node)) << 32) | static_cast<uint32_t>(frame);
}
}  // namespace

GrammarRunner::GrammarRunner(const Grammar& g) : g_(g) { frames_.emplace_back(-1, -1); }

int32_t GrammarRunner::Push(int32_t ret, int32_t parent) {
  const uint64_t key = Pack(ret, parent);
  auto [it, fresh] = frame_index_.try_emplace(key, static_cast<int32_t>(frames_.size()));
  if (fresh) frames_.emplace_back(ret, parent);
  return it->second;
}

void GrammarRunner::Closure(int32_t node, int32_t frame, std::vector<uint64_t>* out) {
  for (int32_t m : g_.node(node).closure) {
    if (!seen_.try_emplace(Pack(m, frame), true).second) continue;
    const Grammar::Node& n = g_.node(m);
    if (n.consumes || (n.accept && frame == 0)) out->push_back(Pack(m, frame));
    if (n.accept && frame != 0) {
      const auto [ret, parent] = frames_[frame];
      Closure(ret, parent, out);
    }
    for (const Grammar::Edge& e : n.edges) {
      if (e.kind == Grammar::Edge::kCall) Closure(g_.rule_start(e.arg), Push(e.to, frame), out);
    }
  }
}

int32_t GrammarRunner::Intern(std::vector<uint64_t> configs) {
  if (configs.empty()) return kDead;
  std::sort(configs.begin(), configs.end());
  configs.erase(std::unique(configs.begin(), configs.end()), configs.end());
  auto it = state_index_.find(configs);
  if (it != state_index_.end()) return it->second;
  State s;
  for (uint64_t c : configs) {
    if (frame_of(c) == 0 && g_.node(node_of(c)).accept) s.can_end = true;
  }
  s.configs = configs;
  const int32_t id = static_cast<int32_t>(states_.size());
  states_.push_back(std::move(s));
  state_index_.emplace(std::move(configs), id);
  byte_next_.resize(states_.size() * 256, -2);
  return id;
}

int32_t GrammarRunner::Root() {
  seen_.clear();
  std::vector<uint64_t> out;
  Closure(g_.rule_start(g_.root()), 0, &out);
  return Intern(std::move(out));
}

int32_t GrammarRunner::AtNode(int32_t node) {
  seen_.clear();
  std::vector<uint64_t> out;
  Closure(node, 0, &out);
  return Intern(std::move(out));
}

int32_t GrammarRunner::Next(int32_t state, int32_t symbol) {
  if (state == kDead) return kDead;
  if (symbol < 256) {
    const int32_t cached = byte_next_[static_cast<size_t>(state) * 256 + symbol];
    if (cached != -2) return cached;
  } else if (auto it = special_next_.find(Pack(state, symbol)); it != special_next_.end()) {
    return it->second;
  }
  seen_.clear();
  std::vector<uint64_t> out;
  const std::vector<uint64_t> configs = states_[state].configs;  // Intern may grow states_
  for (uint64_t c : configs) {
    for (const Grammar::Edge& e : g_.node(node_of(c)).edges) {
      const bool match = symbol < 256 ? e.kind == Grammar::Edge::kBytes && g_.byte_set(e.arg).test(symbol)
                                      : e.kind == Grammar::Edge::kSpecial && e.arg == symbol - 256;
      if (match) Closure(e.to, frame_of(c), &out);
    }
  }
  const int32_t next = Intern(std::move(out));
  if (symbol < 256) {
    const size_t classes = ByteClasses(state), row = static_cast<size_t>(state) * 256;
    const uint8_t k = byte_class_[classes + symbol];
    for (int b = 0; b < 256; ++b) {
      if (byte_class_[classes + b] == k) byte_next_[row + b] = next;
    }
  } else {
    special_next_[Pack(state, symbol)] = next;
  }
  return next;
}

size_t GrammarRunner::ByteClasses(int32_t state) {
  if (states_[state].byte_classes >= 0) return static_cast<size_t>(states_[state].byte_classes) * 256;
  std::vector<int32_t> sets;
  for (uint64_t c : states_[state].configs) {
    for (const Grammar::Edge& e : g_.node(node_of(c)).edges) {
      if (e.kind == Grammar::Edge::kBytes) sets.push_back(e.arg);
    }
  }
  std::sort(sets.begin(), sets.end());
  sets.erase(std::unique(sets.begin(), sets.end()), sets.end());
  // Partition refinement: each byte set splits every class into the bytes
  // inside it and those outside (word-wide set operations; classes are few).
  std::vector<ByteSet> classes{ByteSet().set()};
  for (int32_t set : sets) {
    const ByteSet& in = g_.byte_set(set);
    for (size_t k = 0, n = classes.size(); k < n; ++k) {
      ByteSet inside = classes[k] & in;
      if (inside.none() || inside == classes[k]) continue;
      classes[k] &= ~in;
      classes.push_back(inside);
    }
  }
  std::array<uint8_t, 256> cls{};  // at most 256 classes: ids fit a byte
  for (size_t k = 1; k < classes.size(); ++k) {
    for (size_t b = classes[k]._Find_first(); b < 256; b = classes[k]._Find_next(b)) cls[b] = static_cast<uint8_t>(k);
  }
  const size_t block = byte_class_.size() / 256;
  byte_class_.insert(byte_class_.end(), cls.begin(), cls.end());
  states_[state].byte_classes = static_cast<int32_t>(block);
  return block * 256;
}

int32_t GrammarRunner::NextBytes(int32_t state, const std::string& bytes, size_t from) {
  for (size_t i = from; i < bytes.size() && state != kDead; ++i) state = Next(state, static_cast<uint8_t>(bytes[i]));
  return state;
}

// ---- CompiledGrammar ----

CompiledGrammar::CompiledGrammar(Grammar g, std::shared_ptr<const TokenTable> tokens)
    : g_(std::move(g)), tokens_(std::move(tokens)) {
  // A token steps at most L symbols, and each copy of a repeated expression
  // takes at least one symbol or none (then leaving it or taking the next copy
  // are the same). So a table computed from a node in copy c, which sees at
  // most L copies beyond c, is the same for every copy with at least L + 2
  // copies after it, inside or outside the copy's own block. Copies are
  // recorded inner ones first, so an outer copy maps onto its canonical copy
  // whose inner copies are already mapped.
  const int64_t reach = static_cast<int64_t>(tokens_->max_symbols()) + 2;
  for (const Grammar::Copies& c : g_.copies()) {
    if (c.count <= reach) continue;
    if (table_node_.empty()) {
      table_node_.resize(g_.nodes().size());
      std::iota(table_node_.begin(), table_node_.end(), 0);
    }
    const int64_t canonical = c.count - reach;  // the copies before it map onto it
    const int64_t base = c.first + canonical * c.size;
    for (int64_t k = 0; k < canonical; ++k) {
      for (int64_t j = 0; j < c.size; ++j) table_node_[c.first + k * c.size + j] = table_node_[base + j];
    }
  }
}

void CompiledGrammar::Precompute(int threads) const {
  std::vector<int32_t> todo;
  for (int32_t n = 0; n < static_cast<int32_t>(g_.nodes().size()); ++n) {
    if (g_.node(n).consumes && table_node(n) == n) todo.push_back(n);
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < todo.size();) ForNode(todo[i]);
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

size_t CompiledGrammar::num_tables() const {
  absl::MutexLock lock(&mu_);
  return tables_.size();
}

const CompiledGrammar::NodeTokens& CompiledGrammar::ForNode(int32_t node) const {
  node = table_node(node);
  {
    absl::MutexLock lock(&mu_);
    if (auto it = tables_.find(node); it != tables_.end()) return *it->second;
  }
  std::unique_ptr<NodeTokens> t = Compute(node);
  absl::MutexLock lock(&mu_);
  auto [it, fresh] = tables_.try_emplace(node, std::move(t));
  return *it->second;
}

std::unique_ptr<CompiledGrammar::NodeTokens> CompiledGrammar::Compute(int32_t node) const {
  auto t = std::make_unique<NodeTokens>();
  for (const Grammar::Edge& e : g_.node(node).edges) {
    if (e.kind == Grammar::Edge::kSpecial && e.arg >= 0 && e.arg < tokens_->vocab_size()) t->specials.push_back(e.arg);
  }
  // The node on an empty stack: ending its rule ("can_end") means returning
  // into whatever called it, which only the real stack knows.
  GrammarRunner run(g_);
  const int32_t start = run.AtNode(node);
  const std::vector<int32_t>& sorted = tokens_->sorted();
  const std::vector<uint16_t>& lcp = tokens_->lcp();
  // Free text: a state every byte leads back to, inside its rule, takes every token.
  bool absorbing = !run.can_end(start);
  for (int b = 0; b < 256 && absorbing; ++b) absorbing = run.Next(start, b) == start;
  if (absorbing) {
    t->accepted_mask.assign(tokens_->mask_words(), 0);
    for (int32_t id : sorted) MaskSet(&t->accepted_mask, id);
    return t;
  }
  // Per depth d of the current token: the state after its first d bytes, and
  // whether a state before it (depth 1..d) could return from the rule.
  std::vector<int32_t> st{start};
  std::vector<bool> exit_before{false};
  std::vector<int32_t> accepted;
  size_t valid = 1;  // st[0..valid) hold the previous token's states
  // Only tokens whose first byte the node takes (a literal's node: one byte's range).
  for (int first = 0; first < 256; ++first) {
    if (run.Next(start, first) == GrammarRunner::kDead) continue;
    valid = 1;
    for (size_t i = tokens_->first_byte_begin(first); i < static_cast<size_t>(tokens_->first_byte_begin(first + 1)); ++i) {
      const std::string_view b = tokens_->sorted_bytes(i);
      size_t d = std::min<size_t>(valid == 1 ? 0 : lcp[i], valid - 1);
      // Extend while alive.
      for (; d < b.size() && st[d] != GrammarRunner::kDead; ++d) {
        const int32_t next = run.Next(st[d], static_cast<uint8_t>(b[d]));
        const bool ex = exit_before[d] || (d >= 1 && run.can_end(st[d]));
        if (st.size() <= d + 1) {
          st.resize(d + 2);
          exit_before.resize(d + 2);
        }
        st[d + 1] = next;
        exit_before[d + 1] = ex;
      }
      valid = d + 1;
      if (d == b.size() && st[d] != GrammarRunner::kDead) {
        accepted.push_back(sorted[i]);
      } else {
        // Dead after d bytes: a return from the rule after j in [1, d) bytes
        // could carry on with the rest.
        if (exit_before[d]) t->uncertain.push_back(sorted[i]);
      }
    }
  }
  if (accepted.size() < 2048) {
    std::sort(accepted.begin(), accepted.end());
    t->accepted_ids = std::move(accepted);
  } else {
    t->accepted_mask.assign(tokens_->mask_words(), 0);
    for (int32_t id : accepted) MaskSet(&t->accepted_mask, id);
  }
  return t;
}

// ---- GrammarMatcher ----

GrammarMatcher::GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar)
    : grammar_(std::move(grammar)), runner_(grammar_->grammar()) {
  state_ = runner_.Root();
}

bool GrammarMatcher::Accept(int32_t token) {
  const TokenTable& tt = grammar_->tokens();
  if (state_ == GrammarRunner::kDead || token < 0 || token >= tt.vocab_size()) return false;
  const int32_t next = tt.is_special(token) ? runner_.Next(state_, 256 + token) : tt.bytes(token).empty()
                                                                                      ? GrammarRunner::kDead
                                                                                      : runner_.NextBytes(state_, tt.bytes(token));
  if (next == GrammarRunner::kDead) return false;
  state_ = next;
  return true;
}

const TokenMask& GrammarMatcher::Mask() {
  for (size_t i = 0; i < recent_.size(); ++i) {
    if (recent_[i].first == state_) {
      if (i > 0) std::swap(recent_[i], recent_[0]);
      return recent_[0].second;
    }
  }
  constexpr size_t kRecent = 8;
  if (recent_.size() < kRecent) recent_.emplace_back();
  std::rotate(recent_.rbegin(), recent_.rbegin() + 1, recent_.rend());  // the last entry becomes the first
  recent_[0].first = state_;
  TokenMask& mask = recent_[0].second;
  const TokenTable& tt = grammar_->tokens();
  mask.assign(tt.mask_words(), 0);
  if (state_ == GrammarRunner::kDead) return mask;
  const std::vector<uint64_t> configs = runner_.configs(state_);
  for (uint64_t c : configs) {
    const int32_t node = GrammarRunner::node_of(c);
    if (!grammar_->grammar().node(node).consumes) continue;
    const CompiledGrammar::NodeTokens& nt = grammar_->ForNode(node);
    if (!nt.accepted_mask.empty()) {
      for (size_t w = 0; w < mask.size(); ++w) mask[w] |= nt.accepted_mask[w];
    }
    for (int32_t id : nt.accepted_ids) MaskSet(&mask, id);
    for (int32_t id : nt.specials) MaskSet(&mask, id);
    if (GrammarRunner::frame_of(c) == 0) continue;  // nothing to return into: uncertain tokens fail
    for (int32_t id : nt.uncertain) {
      if (MaskHas(mask, id)) continue;
      if (runner_.NextBytes(state_, tt.bytes(id)) != GrammarRunner::kDead) MaskSet(&mask, id);
    }
  }
  return mask;
}

}  // namespace moeserve::grammar
