// Token masks from grammars: which vocabulary tokens may come next.
//
// A parse state is a set of configurations (NFA node, return stack); stacks
// are hash-consed frames, and states are interned with memoized transitions,
// so stepping a byte is a table lookup after the first time (a lazily built
// DFA over the grammar's pushdown states). Bytes that take the same edges of
// a state (a string's ordinary characters, a digit range) lead to the same
// state, so one step answers its whole class of bytes.
//
// The mask follows xgrammar's split. For every grammar node, once, the
// vocabulary (sorted by bytes, walked with shared prefixes) is run from that
// node with an empty stack below it: a token that stays inside the node's
// rule is accepted whatever the stack (context-independent), one that cannot
// is rejected, and one that may only finish by returning from the rule is
// uncertain and checked at run time against the real stack. Grammars keep
// calls for recursion only, so uncertain tokens are few. Each matcher keeps
// the masks of its last few states (inside a long string the state repeats).
//
// Thread-safety: a CompiledGrammar may be shared (its lazy tables are
// guarded); a GrammarMatcher is per sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "router/grammar/grammar.h"

namespace moeserve::text {
class Tokenizer;
}

namespace moeserve::grammar {

// The vocabulary as the mask sees it: bytes of ordinary tokens (sorted, with
// common-prefix lengths) and which ids are special tokens.
class TokenTable {
 public:
  // Special tokens are those the tokenizer marks special (ids >= num_ordinary).
  static std::shared_ptr<const TokenTable> FromTokenizer(const text::Tokenizer& tok);
  // `bytes[id]`: an ordinary token's bytes; ids with `special[id]` are special tokens.
  TokenTable(std::vector<std::string> bytes, std::vector<bool> special);

  int32_t vocab_size() const { return static_cast<int32_t>(bytes_.size()); }
  int32_t mask_words() const { return (vocab_size() + 63) / 64; }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }
  bool is_special(int32_t id) const { return special_[id]; }
  const std::vector<int32_t>& sorted() const { return sorted_; }  // ordinary ids, by bytes
  const std::vector<uint16_t>& lcp() const { return lcp_; }        // with the previous sorted token
  // The bytes of sorted()[i], stored in sorted order (walks read them in sequence).
  std::string_view sorted_bytes(size_t i) const {
    return std::string_view(sorted_text_).substr(sorted_offset_[i], sorted_offset_[i + 1] - sorted_offset_[i]);
  }
  // sorted()[first_byte_begin(b), first_byte_begin(b + 1)) are the tokens starting with byte b.
  int32_t first_byte_begin(int b) const { return first_byte_begin_[b]; }
  // The most symbols one token steps (bytes of the longest; 1 for a special token).
  int32_t max_symbols() const { return max_symbols_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<bool> special_;
  std::vector<int32_t> sorted_;
  std::vector<uint16_t> lcp_;
  int32_t first_byte_begin_[257] = {};
  std::string sorted_text_;
  std::vector<uint32_t> sorted_offset_;
  int32_t max_symbols_ = 1;
};

// A bitset over the vocabulary: bit t set = token t allowed.
using TokenMask = std::vector<uint64_t>;
inline bool MaskHas(const TokenMask& m, int32_t t) { return (m[t >> 6] >> (t & 63)) & 1; }
inline void MaskSet(TokenMask* m, int32_t t) { (*m)[t >> 6] |= uint64_t{1} << (t & 63); }

// Runs configuration sets of one grammar over symbols (bytes 0..255, special
// tokens 256 + id), interning states and memoizing transitions.
class GrammarRunner {
 public:
  static constexpr int32_t kDead = -1;
  explicit GrammarRunner(const Grammar& g);
  // The state at the start of the root rule.
  int32_t Root();
  // The state of one configuration: `node` on an empty stack.
  int32_t AtNode(int32_t node);
  int32_t Next(int32_t state, int32_t symbol);
  int32_t NextBytes(int32_t state, const std::string& bytes, size_t from = 0);
  // Some configuration is at the end of the bottom rule: the input may end here.
  bool can_end(int32_t state) const { return states_[state].can_end; }
  // (node, frame) pairs; frame 0 is the empty stack.
  const std::vector<uint64_t>& configs(int32_t state) const { return states_[state].configs; }
  static int32_t node_of(uint64_t c) { return static_cast<int32_t>(c >> 32); }
  static int32_t frame_of(uint64_t c) { return static_cast<int32_t>(c & 0xffffffffu); }
  size_t num_states() const { return states_.size(); }
  size_t num_frames() const { return frames_.size(); }

 private:
  struct State {
    std::vector<uint64_t> configs;
    bool can_end = false;
    int32_t byte_classes = -1;  // block of byte_class_, once a byte was stepped from here
  };
  int32_t Push(int32_t ret, int32_t parent);
  void Closure(int32_t node, int32_t frame, std::vector<uint64_t>* out);
  int32_t Intern(std::vector<uint64_t> configs);
  // Splits the 256 bytes into classes that take the same edges of `state`'s
  // configurations (so lead to the same state); returns the block's offset.
  size_t ByteClasses(int32_t state);

  const Grammar& g_;
  std::vector<std::pair<int32_t, int32_t>> frames_;  // (return node, parent frame)
  absl::flat_hash_map<uint64_t, int32_t> frame_index_;
  std::vector<State> states_;
  absl::flat_hash_map<std::vector<uint64_t>, int32_t> state_index_;
  std::vector<int32_t> byte_next_;                   // [state * 256 + byte], -2: not computed
  std::vector<uint8_t> byte_class_;                  // 256 per block: a byte's class in its state
  absl::flat_hash_map<uint64_t, int32_t> special_next_;
  absl::flat_hash_map<uint64_t, bool> seen_;          // scratch for Closure
};

// A grammar bound to a vocabulary, with the per-node token tables computed
// on first use.
class CompiledGrammar {
 public:
  CompiledGrammar(Grammar g, std::shared_ptr<const TokenTable> tokens);
  const Grammar& grammar() const { return g_; }
  const TokenTable& tokens() const { return *tokens_; }

  struct NodeTokens {
    std::vector<int32_t> accepted_ids;   // when few
    TokenMask accepted_mask;             // otherwise (empty when accepted_ids is used)
    std::vector<int32_t> uncertain;
    std::vector<int32_t> specials;       // special tokens on the node's own edges
  };
  const NodeTokens& ForNode(int32_t node) const;
  // Computes every node's table now (on `threads` threads), so no step waits for one.
  void Precompute(int threads) const;
  // Tables computed so far (for tests and metrics); nodes that share one count once.
  size_t num_tables() const;
  // The node whose table `node` uses: itself, or the same node of another copy
  // of a long bounded repetition (Grammar::Copies) with the same future for
  // as many symbols as a token holds. A string's maxLength of 10,000 then
  // costs the tables of ~130 characters, not 10,000.
  int32_t table_node(int32_t node) const { return table_node_.empty() ? node : table_node_[node]; }

 private:
  std::unique_ptr<NodeTokens> Compute(int32_t node) const;
  Grammar g_;
  std::shared_ptr<const TokenTable> tokens_;
  std::vector<int32_t> table_node_;  // empty: every node its own
  mutable absl::Mutex mu_;
  mutable absl::flat_hash_map<int32_t, std::unique_ptr<NodeTokens>> tables_ ABSL_GUARDED_BY(mu_);
};

// One sequence's position in a grammar.
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar);
  // Advances by one token; false (and no change) if the grammar forbids it.
  bool Accept(int32_t token);
  // The tokens allowed next, as a bitset over the vocabulary.
  const TokenMask& Mask();
  // The grammar may end here / nothing more may follow.
  bool can_end() const { return runner_.can_end(state_); }
  bool dead() const { return state_ == GrammarRunner::kDead; }
  const CompiledGrammar& compiled() const { return *grammar_; }

 private:
  std::shared_ptr<const CompiledGrammar> grammar_;
  GrammarRunner runner_;
  int32_t state_;
  // Masks of recent states, most recent first.
  std::vector<std::pair<int32_t, TokenMask>> recent_;
};

}  // namespace moeserve::grammar
