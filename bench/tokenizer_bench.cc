// Tokenizer throughput: encode and decode MB/s of the o200k_harmony tokenizer
// on a corpus file, one thread. Prints one JSON line per measurement.
//   moeserve_tokenizer_bench --tokenizer tokenizer.json --corpus FILE [--reps 5]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "router/text/tokenizer.h"

int main(int argc, char** argv) {
  std::string tok_path, corpus_path;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tokenizer") tok_path = argv[i + 1];
    else if (k == "--corpus") corpus_path = argv[i + 1];
    else if (k == "--reps") reps = std::stoi(argv[i + 1]);
  }
  auto tok = moeserve::text::Tokenizer::FromTokenizerJson(tok_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::ifstream in(corpus_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string corpus = ss.str();
  // Documents are separated by form feeds; each is encoded on its own, as a
  // server encodes requests.
  std::vector<std::string> docs;
  for (size_t b = 0, e; b < corpus.size(); b = e + 1) {
    e = corpus.find('\f', b);
    if (e == std::string::npos) e = corpus.size();
    docs.push_back(corpus.substr(b, e - b));
  }
  auto now = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  double best_enc = 0, best_dec = 0;
  size_t tokens = 0;
  for (int r = 0; r < reps; ++r) {
    std::vector<std::vector<int32_t>> ids;
    const double a = now();
    for (const auto& d : docs) ids.push_back((*tok)->EncodeOrdinary(d));
    const double b = now();
    size_t bytes = 0;
    for (const auto& v : ids) bytes += (*tok)->Decode(v)->size();
    const double c = now();
    tokens = 0;
    for (const auto& v : ids) tokens += v.size();
    best_enc = std::max(best_enc, corpus.size() / (b - a) / 1e6);
    best_dec = std::max(best_dec, bytes / (c - b) / 1e6);
  }
  std::printf("{\"what\":\"encode\",\"mb_per_s\":%.2f,\"tokens\":%zu,\"bytes\":%zu}\n", best_enc, tokens, corpus.size());
  std::printf("{\"what\":\"decode\",\"mb_per_s\":%.2f}\n", best_dec);
  return 0;
}
