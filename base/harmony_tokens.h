// The special tokens of o200k_harmony, gpt-oss's vocabulary, by name
// (reference/tokenizer.md; openai/harmony). The tokenizer's specials table,
// the harmony renderer and parser and the checkpoint generator name them from
// here. Which tokens end a generation is the model's to say (config.json and
// generation_config.json eos ids, the tokenizer's <|return|> and <|call|>), not
// this header's.
#pragma once

#include <cstdint>

namespace moeserve::harmony {

constexpr int32_t kStartOfText = 199998;    // <|startoftext|>
constexpr int32_t kEndOfText = 199999;      // <|endoftext|>
constexpr int32_t kReturn = 200002;         // <|return|>: the final message is done
constexpr int32_t kConstrain = 200003;      // <|constrain|>
constexpr int32_t kChannel = 200005;        // <|channel|>
constexpr int32_t kStart = 200006;          // <|start|>
constexpr int32_t kEnd = 200007;            // <|end|>
constexpr int32_t kMessage = 200008;        // <|message|>
constexpr int32_t kCall = 200012;           // <|call|>: a tool call is done
constexpr int32_t kEndOfPrompt = 200018;    // <|endofprompt|>
constexpr int32_t kFirstReserved = 200019;  // <|reserved_200019|> ... up to the vocabulary's end

}  // namespace moeserve::harmony
