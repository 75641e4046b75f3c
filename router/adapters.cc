#include "router/adapters.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moeserve::router {

AdapterRegistry::AdapterRegistry(std::string base_name, int max_loras, int64_t max_rank)
    : base_name_(std::move(base_name)), max_loras_(max_loras), max_rank_(max_rank), used_(max_loras + 1, false) {
  used_[0] = true;  // the base model
}

std::shared_ptr<const Adapter> AdapterRegistry::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = published_.find(name);
  return it == published_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const Adapter>> AdapterRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<const Adapter>> out;
  for (const auto& [name, a] : published_) out.push_back(a);
  return out;
}

absl::StatusOr<Adapter> AdapterRegistry::Reserve(const std::string& name, const std::string& path) {
  if (name.empty() || name.size() > 256) return absl::InvalidArgumentError("an adapter name must have 1 to 256 characters");
  if (path.empty()) return absl::InvalidArgumentError("the adapter's path is empty");
  std::lock_guard<std::mutex> lock(mu_);
  if (name == base_name_) {
    return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" is the base model's name"));
  }
  if (published_.count(name)) {
    return absl::InvalidArgumentError(absl::StrCat("The lora adapter '", name, "' has already been loaded."));
  }
  auto free = std::find(used_.begin(), used_.end(), false);
  if (free == used_.end()) {
    return absl::OutOfRangeError(absl::StrCat("--max-loras ", max_loras_,
                                                     " adapters are loaded (or still finishing requests); unload one "
                                                     "first"));
  }
  *free = true;
  Adapter a;
  a.name = name;
  a.path = path;
  a.slot = static_cast<int32_t>(free - used_.begin());
  a.cache_key = next_key_++;
  return a;
}

void AdapterRegistry::Publish(const Adapter& adapter) {
  std::lock_guard<std::mutex> lock(mu_);
  published_[adapter.name] = std::make_shared<const Adapter>(adapter);
}

void AdapterRegistry::Cancel(const Adapter& adapter) {
  std::lock_guard<std::mutex> lock(mu_);
  used_[adapter.slot] = false;
}

absl::Status AdapterRegistry::Retire(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = published_.find(name);
  if (it == published_.end()) {
    return absl::NotFoundError(absl::StrCat("The lora adapter '", name, "' cannot be found."));
  }
  retired_.push_back(std::move(it->second));
  published_.erase(it);
  return absl::OkStatus();
}

std::vector<Adapter> AdapterRegistry::Drained() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Adapter> out;
  for (const auto& a : retired_) {
    if (a.use_count() == 1) out.push_back(*a);
  }
  return out;
}

void AdapterRegistry::Free(int32_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(retired_, [slot](const auto& a) { return a->slot == slot; });
  used_[slot] = false;
}

std::vector<Adapter> AdapterRegistry::Resident() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Adapter> out;
  for (const auto& [name, a] : published_) out.push_back(*a);
  for (const auto& a : retired_) out.push_back(*a);
  return out;
}

}  // namespace moeserve::router
