#include "router/grammar/reply_grammar.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "router/grammar/json_schema.h"

namespace moeserve::grammar {

using json = nlohmann::ordered_json;

std::string ReplyRules::Key() const {
  json k = {{"final", static_cast<int>(final)}, {"calls", static_cast<int>(calls)}, {"named", named}};
  if (final == Final::kJsonSchema) k["schema"] = final_schema;
  json tl = json::array();
  if (calls != Calls::kNone) {
    for (const auto& t : tools) {
      tl.push_back({t.name, t.parameters ? *t.parameters : json(), t.strict});
    }
  }
  k["tools"] = std::move(tl);
  return k.dump();
}

absl::StatusOr<Grammar> BuildReplyGrammar(const ReplyRules& r, const text::Tokenizer& tok) {
  auto special = [&](const char* text) -> absl::StatusOr<Expr> {
    const int32_t id = tok.SpecialId(text);
    if (id < 0) return absl::FailedPreconditionError(absl::StrCat("the tokenizer has no ", text));
    return Special(id);
  };
  ASSIGN_OR_RETURN(const Expr channel, special("<|channel|>"));
  ASSIGN_OR_RETURN(const Expr message, special("<|message|>"));
  ASSIGN_OR_RETURN(const Expr end, special("<|end|>"));
  ASSIGN_OR_RETURN(const Expr start, special("<|start|>"));
  ASSIGN_OR_RETURN(const Expr ret, special("<|return|>"));
  ASSIGN_OR_RETURN(const Expr call, special("<|call|>"));
  ASSIGN_OR_RETURN(const Expr constrain, special("<|constrain|>"));
  ByteSet all;
  all.set();
  const Expr text = Star(Bytes(all));

  Grammar g;
  const int32_t root = g.AddRule("reply");
  const Expr next_message = Seq({end, start, Lit("assistant")});
  std::vector<Expr> prefaces = {Seq({channel, Lit("analysis"), message, text, next_message})};
  if (r.calls != ReplyRules::Calls::kNone) prefaces.push_back(Seq({channel, Lit("commentary"), message, text, next_message}));

  std::vector<Expr> last;
  if (r.calls != ReplyRules::Calls::kRequired && r.calls != ReplyRules::Calls::kNamed) {
    Expr body = text;
    if (r.final == ReplyRules::Final::kJsonObject) {
      body = AnyJsonObject(&g);
    } else if (r.final == ReplyRules::Final::kJsonSchema) {
      absl::StatusOr<Expr> e = JsonSchemaExpr(&g, r.final_schema);
      if (!e.ok()) return absl::InvalidArgumentError(absl::StrCat("response_format: ", e.status().message()));
      body = std::move(*e);
    }
    last.push_back(Seq({channel, Lit("final"), message, std::move(body), ret}));
  }
  if (r.calls != ReplyRules::Calls::kNone) {
    const Expr content_type = Opt(Alt({Seq({Lit(" "), constrain, Lit("json")}), Lit(" json")}));
    for (const text::ToolDescription& t : r.tools) {
      if (r.calls == ReplyRules::Calls::kNamed && t.name != r.named) continue;
      Expr args = text;
      if (r.calls != ReplyRules::Calls::kAuto || t.strict) {
        if (t.parameters) {
          absl::StatusOr<Expr> e = JsonSchemaExpr(&g, *t.parameters);
          if (!e.ok()) {
            return absl::InvalidArgumentError(absl::StrCat("tools: function '", t.name, "' parameters: ", e.status().message()));
          }
          args = std::move(*e);
        } else {
          args = AnyJsonObject(&g);
        }
      }
      const std::string to = absl::StrCat("to=functions.", t.name);
      Expr header = Alt({Seq({channel, Lit("commentary " + to)}), Seq({Lit(" " + to), channel, Lit("commentary")})});
      last.push_back(Seq({std::move(header), content_type, message, std::move(args), call}));
    }
  }
  if (last.empty()) return absl::InvalidArgumentError("tool_choice names no declared function");
  g.Define(root, Seq({Star(Alt(std::move(prefaces))), Alt(std::move(last))}));
  if (absl::Status st = g.Compile(root); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("schema: ", st.message()));
  }
  return g;
}

ReplyGrammarCache::ReplyGrammarCache(const text::Tokenizer& tok, size_t capacity, size_t max_states)
    : tok_(tok), tokens_(TokenTable::FromTokenizer(tok)), capacity_(capacity), max_states_(max_states) {}

absl::StatusOr<std::shared_ptr<const CompiledGrammar>> ReplyGrammarCache::Get(const ReplyRules& rules) {
  if (rules.unconstrained()) return std::shared_ptr<const CompiledGrammar>();
  const std::string key = rules.Key();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if (it->first == key) {
        lru_.splice(lru_.begin(), lru_, it);
        return lru_.front().second;
      }
    }
  }
  absl::StatusOr<Grammar> g = BuildReplyGrammar(rules, tok_);
  if (!g.ok()) return g.status();
  auto compiled = std::make_shared<const CompiledGrammar>(std::move(*g), tokens_);
  // Every node's token table before the first step: the request pays once (and
  // later ones with the same rules not at all), no step of a running batch does.
  compiled->Precompute(static_cast<int>(std::clamp(std::thread::hardware_concurrency() / 2, 1u, 8u)));
  std::lock_guard<std::mutex> lock(mu_);
  lru_.emplace_front(key, compiled);
  states_ += compiled->grammar().nodes().size();
  while (lru_.size() > 1 && (lru_.size() > capacity_ || states_ > max_states_)) {
    states_ -= lru_.back().second->grammar().nodes().size();
    lru_.pop_back();
  }
  return compiled;
}

}  // namespace moeserve::grammar
