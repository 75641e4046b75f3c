// The LoRA adapters a router serves beside its base model (docs/lora.md).
//
// Each adapter has a name (what clients send as `model`), the directory its
// PEFT files are in, and a slot: the number the workers hold it under
// (worker.v1 LoadAdapter, NewSequence.adapter). --max-loras bounds the slots,
// so at most that many adapters are loaded at once, and every step may mix
// any of them. An adapter's prefix-cache key is unique per load, so cached
// blocks of an adapter never serve the base model, another adapter, or a
// later adapter loaded under the same name.
//
// Loading reserves a slot, the pool loads the files on every worker, then the
// name is published. Unloading retires the name at once (new requests for it
// get a 404); the slot is freed, and the workers drop the weights, when the
// last request that holds the adapter has finished, so running streams are
// never disturbed.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moeserve::router {

struct Adapter {
  std::string name, path;
  int32_t slot = 0;        // >= 1 (0 is the base model on the wire)
  int64_t cache_key = 0;   // prefix-cache namespace, unique per load
  int64_t rank = 0;        // as the workers loaded it
  int64_t bytes = 0;       // worker memory it takes (per worker)
};

class AdapterRegistry {
 public:
  // `base_name`: the served model's name (no adapter may take it).
  AdapterRegistry(std::string base_name, int max_loras, int64_t max_rank);

  int max_loras() const { return max_loras_; }
  int64_t max_rank() const { return max_rank_; }

  // The published adapter of that name, or null. Holding the pointer keeps
  // the adapter loaded.
  std::shared_ptr<const Adapter> Find(const std::string& name) const;
  // Published adapters by name.
  std::vector<std::shared_ptr<const Adapter>> List() const;

  // A slot for a new adapter; InvalidArgument when the name is taken, or
  // OutOfRange when --max-loras adapters are loaded (or draining).
  absl::StatusOr<Adapter> Reserve(const std::string& name, const std::string& path);
  // The reserved adapter becomes visible (after every worker loaded it).
  void Publish(const Adapter& adapter);
  // A reservation the workers refused: the slot is free again.
  void Cancel(const Adapter& adapter);
  // Retires the name; NotFound when no such adapter is published.
  absl::Status Retire(const std::string& name);
  // Retired adapters no request holds any more: the caller unloads them from
  // the workers, then calls Free.
  std::vector<Adapter> Drained() const;
  void Free(int32_t slot);
  // Every adapter the workers must hold (published, or retired and still in
  // use), for a worker that (re)joins.
  std::vector<Adapter> Resident() const;

 private:
  std::string base_name_;
  int max_loras_;
  int64_t max_rank_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const Adapter>> published_;
  std::vector<std::shared_ptr<const Adapter>> retired_;
  std::vector<bool> used_;  // [slot]
  int64_t next_key_ = 1;
};

}  // namespace moeserve::router
