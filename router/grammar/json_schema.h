// JSON Schema -> grammar (structured output).
//
// Supported: type (one or a list, "null" included, OpenAPI's nullable),
// object (properties in their declared order, required, additionalProperties:
// absent or false means none, true or a schema allows any further keys after
// the declared ones), array (items, prefixItems, minItems, maxItems), string
// (minLength, maxLength, pattern as an ECMA-262 subset, format: date, time,
// date-time, uuid, ipv4, email), integer (any minimum/maximum, exclusive
// too), number (bounds that are integers, the lower one not negative), enum,
// const, anyOf, oneOf (as anyOf), allOf of one schema, $ref to "#", "#/$defs/..."
// or "#/definitions/..." (recursion allowed), boolean schemas. Annotations
// (title, description, default, examples, $schema, $id, $comment, deprecated,
// readOnly, writeOnly) are ignored; an unknown format is an annotation.
// Anything else is an InvalidArgument naming the keyword and where it is.
//
// Output shape: the compact form, with one optional space between tokens (no
// newlines or indentation: a model cannot spend its tokens on layout); numbers
// have at most 16 integer and
// fraction digits, exponents at most 2 digits (every number is a finite double).
#pragma once

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "router/grammar/grammar.h"

namespace moeserve::grammar {

// An expression matching the JSON texts that `schema` validates; rules it
// needs (recursive references, the generic JSON value) are added to `g`.
absl::StatusOr<Expr> JsonSchemaExpr(Grammar* g, const nlohmann::ordered_json& schema);
// Any JSON object (response_format json_object).
Expr AnyJsonObject(Grammar* g);
// A complete grammar for `schema` alone (tests, benchmarks, fuzzing), of at
// most `max_nodes` states.
absl::StatusOr<Grammar> JsonSchemaGrammar(const nlohmann::ordered_json& schema,
                                          size_t max_nodes = Grammar::kMaxNodes);

}  // namespace moeserve::grammar
