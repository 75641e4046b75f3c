// Grammars over bytes and special tokens, compiled for token masking
// (DESIGN §3, structured output).
//
// A grammar is a set of rules, each a regular expression over symbols (bytes
// 0..255 and special-token ids) that may call other rules: a context-free
// grammar written the way EBNF / GBNF write one. Compile() turns every rule
// into a Thompson NFA whose call edges enter another rule, so a parse state is
// a set of (NFA node, return stack) pairs (matcher.h runs them). Calls that
// can recurse without consuming a symbol (left recursion) are refused, so every
// state is finite.
//
// Thread-safety: immutable after Compile().
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"

namespace moeserve::grammar {

using ByteSet = std::bitset<256>;

// A rule body: bytes, special tokens, sequences, alternatives, repetitions
// and calls of other rules. Immutable once built: sub-expressions are shared,
// so a copy (an array's item schema repeated, a separator at every member)
// costs no deep copy of the tree.
struct Expr {
  enum class Kind { kEmpty, kBytes, kSpecial, kSeq, kAlt, kRepeat, kCall };
  Kind kind = Kind::kEmpty;
  ByteSet bytes;       // kBytes
  int32_t value = 0;   // kSpecial: the token id; kCall: the rule
  int min = 0;         // kRepeat
  int max = -1;        // kRepeat: -1 is unbounded
  std::shared_ptr<const std::vector<Expr>> kids;  // kSeq, kAlt; kRepeat: one
};

Expr Empty();
Expr Bytes(const ByteSet& set);
Expr Range(uint8_t lo, uint8_t hi);
Expr Lit(std::string_view text);  // these bytes in order
Expr Special(int32_t token_id);
Expr Seq(std::vector<Expr> parts);
Expr Alt(std::vector<Expr> options);
Expr Repeat(Expr e, int min, int max);  // max -1: unbounded
inline Expr Star(Expr e) { return Repeat(std::move(e), 0, -1); }
inline Expr Plus(Expr e) { return Repeat(std::move(e), 1, -1); }
inline Expr Opt(Expr e) { return Repeat(std::move(e), 0, 1); }
Expr Call(int32_t rule);
// One UTF-8 encoded code point in [lo, hi] (surrogates excluded), as byte sequences.
Expr CodePoints(uint32_t lo, uint32_t hi);

class Grammar {
 public:
  // Declares a rule (bodies may call rules declared later); returns its id.
  int32_t AddRule(std::string name);
  void Define(int32_t rule, Expr body);
  int32_t num_rules() const { return static_cast<int32_t>(names_.size()); }
  const std::string& rule_name(int32_t r) const { return names_[r]; }

  // Builds the NFAs with `root` as the start rule. InvalidArgument for an
  // undefined rule, left recursion, or a grammar over the size limit.
  absl::Status Compile(int32_t root);

  // The compiled form.
  struct Edge {
    enum Kind : uint8_t { kBytes, kSpecial, kCall, kEps };
    Kind kind;
    int32_t arg;  // kBytes: index into byte_sets(); kSpecial: token id; kCall: rule
    int32_t to;   // the node after the edge (after the call returns, for kCall)
  };
  struct Node {
    std::vector<Edge> edges;
    bool accept = false;          // the end of its rule
    bool consumes = false;        // has a kBytes or kSpecial edge
    std::vector<int32_t> closure; // nodes reachable by kEps edges (itself included) with a non-eps edge or accept
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const Node& node(int32_t n) const { return nodes_[n]; }
  const ByteSet& byte_set(int32_t i) const { return byte_sets_[i]; }
  int32_t rule_start(int32_t r) const { return rule_start_[r]; }
  int32_t root() const { return root_; }

  // A bounded repetition's copies of one expression, built one after another:
  // copy c is nodes [first + c * size, first + (c + 1) * size), isomorphic to
  // every other copy. Two copies with many copies still after them have the
  // same future for as many symbols as a token can hold, so the same token
  // tables (CompiledGrammar computes one copy's and shares it). Recorded
  // inner repetitions first.
  struct Copies {
    int32_t first;
    int32_t size;
    int32_t count;
  };
  const std::vector<Copies>& copies() const { return copies_; }

  // ~150 bytes a state: a grammar at the limit takes ~150 MB (a string's
  // maxLength of ~18,000 characters, ~55 states each).
  static constexpr size_t kMaxNodes = 1'000'000;
  // A lower limit for Compile() (the fuzz target's, whose every input compiles
  // a grammar and throws the large ones away).
  void set_max_nodes(size_t n) { max_nodes_ = n; }

 private:
  int32_t NewNode();
  int32_t Build(const Expr& e, int32_t from);
  // Builds `count` copies of `e` in sequence from `cur` (with an epsilon edge
  // to `exit` before each when exit >= 0); records them; returns the last end.
  int32_t BuildCopies(const Expr& e, int32_t cur, int count, int32_t exit);
  void AddEdge(int32_t from, Edge::Kind kind, int32_t arg, int32_t to);

  std::vector<std::string> names_;
  std::vector<Expr> bodies_;
  std::vector<bool> defined_;
  std::vector<Node> nodes_;
  std::vector<ByteSet> byte_sets_;
  std::unordered_map<ByteSet, int32_t> byte_set_index_;
  std::vector<int32_t> rule_start_;
  std::vector<Copies> copies_;
  int32_t root_ = -1;
  bool too_large_ = false;
  size_t max_nodes_ = kMaxNodes;
};

}  // namespace moeserve::grammar
