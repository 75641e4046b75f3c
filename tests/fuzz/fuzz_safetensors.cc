// safetensors files and config.json, as a model directory would hold them:
// the input is split at the first 0xff byte into a config.json text and a
// safetensors file. Opening must return a clear error or a consistent file
// (every view inside the mapping), never crash or read out of bounds.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "engine/config.h"
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  const uint8_t* split = static_cast<const uint8_t*>(std::memchr(data, 0xff, size));
  const size_t config_len = split ? static_cast<size_t>(split - data) : 0;
  if (split) {
    auto c = ParseModelConfig(std::string(reinterpret_cast<const char*>(data), config_len), "config.json");
    if (c.ok()) (void)c->Validate();
  }
  const uint8_t* file = split ? split + 1 : data;
  const size_t file_len = size - (file - data);
  static const std::string path = fuzz::ScratchDir("safetensors") + "/model.safetensors";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(file), static_cast<std::streamsize>(file_len));
  }
  auto st = SafetensorsFile::Open(path);
  if (st.ok()) {
    const auto& sf = **st;
    for (const auto& [name, t] : sf.tensors()) {
      // Every view lies inside the file: touch its first and last byte.
      if (t.nbytes > 0) {
        volatile char first = static_cast<const char*>(t.data)[0];
        volatile char last = static_cast<const char*>(t.data)[t.nbytes - 1];
        (void)first, (void)last;
      }
      if (static_cast<size_t>(t.numel()) * DTypeSize(t.dtype) != t.nbytes) __builtin_trap();
    }
  }
  return 0;
}
