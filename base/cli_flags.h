// "--flag value" parsing shared by the daemons (moeserve-worker, moeserve-router).
#pragma once

#include <initializer_list>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace moeserve {

// Flags as name -> value; `switches` take no value (their value is "1");
// `lists` take one or more values (every argument up to the next "--flag",
// and again when repeated), joined with '\n'.
// Unknown flags, a flag without a value and stray arguments are errors;
// "--help"/"-h" sets *help and returns an empty map.
inline absl::StatusOr<std::map<std::string, std::string>> ParseFlagPairs(int argc, char** argv,
                                                                          std::initializer_list<const char*> known,
                                                                          bool* help,
                                                                          std::initializer_list<const char*> switches = {},
                                                                          std::initializer_list<const char*> lists = {}) {
  std::map<std::string, std::string> flags;
  *help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      *help = true;
      return std::map<std::string, std::string>();
    }
    bool is_switch = false;
    for (const char* k : switches) is_switch |= a == k;
    if (is_switch) {
      flags[a].assign(1, '1');  // (not = "1": GCC 12 warns falsely, -Wrestrict)
      continue;
    }
    bool ok = false;
    for (const char* k : known) ok |= a == k;
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("unknown argument \"", a, "\" (see --help)"));
    if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("flag ", a, " needs a value"));
    bool is_list = false;
    for (const char* k : lists) is_list |= a == k;
    if (is_list) {
      std::string& v = flags[a];
      for (; i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0; ++i) {
        if (!v.empty()) v += '\n';
        v += argv[i + 1];
      }
      continue;
    }
    flags[a] = argv[++i];
  }
  return flags;
}

}  // namespace moeserve
