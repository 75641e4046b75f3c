// PEFT LoRA adapters (engine/lora.h): the input is split at the first 0xff
// byte into adapter_config.json and adapter_model.safetensors. Loading
// against the tiny model must give a clear error or an adapter whose factors
// have the sizes their shapes say; a loaded adapter then serves a 3-token
// step on the CPU backend (every factor read inside its buffers).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/cpu/cpu_backend.h"
#include "engine/lora.h"
#include "tests/fuzz/fuzz_util.h"
#include "tools/checkpoint_gen.h"

namespace {

moeserve::CpuBackend& TinyBackend() {
  using namespace moeserve;
  static std::unique_ptr<CpuBackend> backend = [] {
    const std::string dir = moeserve::fuzz::ScratchDir("lora_tiny");
    CheckpointGenOptions o;
    o.config = *PresetConfig("tiny");
    if (!GenerateCheckpoint(dir, o).ok()) std::abort();
    auto w = LoadModelWeights(dir);
    if (!w.ok()) std::abort();
    CpuOptions co;
    co.num_threads = 1;
    co.kv.block_size = 4;
    co.kv.num_blocks[0] = co.kv.num_blocks[1] = 4;
    return std::make_unique<CpuBackend>(std::move(*w), co);
  }();
  return *backend;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  CpuBackend& backend = TinyBackend();
  static const std::string dir = fuzz::ScratchDir("lora");
  const uint8_t* split = static_cast<const uint8_t*>(std::memchr(data, 0xff, size));
  const size_t config_len = split ? static_cast<size_t>(split - data) : size;
  const uint8_t* file = split ? split + 1 : data + size;
  {
    std::ofstream(dir + "/adapter_config.json", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(config_len));
    std::ofstream(dir + "/adapter_model.safetensors", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(file), static_cast<std::streamsize>(size - (file - data)));
  }
  auto adapter = LoadLoraAdapter(dir, backend.config(), {/*max_rank=*/64});
  if (!adapter.ok()) return 0;
  for (const auto& layer : (*adapter)->layers) {
    for (const LoraFactors& f : layer) {
      if (f.empty()) continue;
      const size_t esz = DTypeSize(f.dtype);
      if (f.a.size() != static_cast<size_t>(f.experts * f.rank * f.in) * esz ||
          f.b.size() != static_cast<size_t>(f.experts * f.out * f.rank) * esz ||
          f.scale.size() != static_cast<size_t>(f.experts) || f.active.size() != static_cast<size_t>(f.experts) ||
          f.rank > 64) {
        __builtin_trap();
      }
    }
  }
  if (!backend.SetLoraAdapter(0, *adapter).ok()) __builtin_trap();
  const int32_t tokens[] = {1, 2, 3}, table[] = {0};
  SequenceInput in;
  in.tokens = tokens;
  in.block_tables[0] = in.block_tables[1] = table;
  in.adapter = 0;
  ForwardOutput out;
  if (!backend.Forward({&in, 1}, &out).ok()) __builtin_trap();
  (void)backend.SetLoraAdapter(0, nullptr);
  return 0;
}
