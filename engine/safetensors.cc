#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace moeserve {
namespace {

using json = nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // same bound as the reference reader

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what));
}

}  // namespace

std::string TensorView::ShapeString() const { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    return FileError(path, absl::StrCat("file of ", f->size_, " bytes is too short for a safetensors header"));
  }
  void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return FileError(path, "mmap failed");
  f->map_ = m;
  const uint8_t* base = static_cast<const uint8_t*>(m);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every supported host
  if (header_len > kMaxHeaderBytes || header_len > f->size_ - 8) {
    return FileError(path, absl::StrCat("header length ", header_len, " exceeds the file (", f->size_,
                                        " bytes); truncated or not safetensors"));
  }
  const char* hbegin = reinterpret_cast<const char*>(base + 8);
  json header = json::parse(hbegin, hbegin + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return FileError(path, "header is not a JSON object");
  const size_t data_begin = 8 + header_len;
  const size_t data_size = f->size_ - data_begin;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& e = it.value();
    auto bad = [&](const std::string& what) { return FileError(path, absl::StrCat("tensor ", name, ": ", what)); };
    if (!e.is_object()) return bad("entry is not an object");
    auto dt = e.find("dtype"), sh = e.find("shape"), off = e.find("data_offsets");
    if (dt == e.end() || !dt->is_string()) return bad("missing dtype");
    TensorView v;
    v.name = name;
    v.file = path;
    if (!ParseDType(dt->get<std::string>(), &v.dtype)) return bad(absl::StrCat("unsupported dtype ", dt->dump()));
    if (sh == e.end() || !sh->is_array()) return bad("missing shape");
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return bad(absl::StrCat("bad shape ", sh->dump()));
      uint64_t n = d.get<uint64_t>();
      if (n > (uint64_t{1} << 40) || (n && numel > (uint64_t{1} << 46) / n)) return bad("shape too large");
      numel *= n;
      v.shape.push_back(static_cast<int64_t>(n));
    }
    if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return bad("missing data_offsets");
    }
    const uint64_t b = (*off)[0].get<uint64_t>(), en = (*off)[1].get<uint64_t>();
    if (b > en || en > data_size) {
      return bad(absl::StrCat("data_offsets [", b, ", ", en, "] outside the data section of ", data_size,
                              " bytes (truncated file?)"));
    }
    if (en - b != numel * DTypeSize(v.dtype)) {
      return bad(absl::StrCat("holds ", en - b, " bytes but ", v.ShapeString(), " ", DTypeName(v.dtype), " needs ",
                              numel * DTypeSize(v.dtype)));
    }
    v.data = base + data_begin + b;
    v.nbytes = en - b;
    ranges.emplace_back(b, en);
    f->tensors_.emplace(name, std::move(v));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return FileError(path, "tensor data ranges overlap");
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  auto ck = std::make_unique<Checkpoint>();
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  std::vector<std::string> shard_names;
  json weight_map;
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    json idx = json::parse(ss.str(), nullptr, false);
    if (idx.is_discarded() || !idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object()) {
      return absl::DataLossError(absl::StrCat(index_path, ": not a safetensors index (no weight_map object)"));
    }
    weight_map = idx["weight_map"];
    for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
      if (!it->is_string()) return absl::DataLossError(absl::StrCat(index_path, ": entry ", it.key(), " is not a file name"));
      const std::string s = it->get<std::string>();
      if (s.find('/') != std::string::npos || s.find("..") != std::string::npos) {
        return absl::DataLossError(absl::StrCat(index_path, ": shard name ", s, " leaves the model directory"));
      }
      if (std::find(shard_names.begin(), shard_names.end(), s) == shard_names.end()) shard_names.push_back(s);
    }
  } else if (fs::exists(model_dir + "/model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat(model_dir, ": no model.safetensors.index.json or model.safetensors"));
  }
  for (const std::string& s : shard_names) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(model_dir + "/" + s));
    for (const auto& [name, view] : file->tensors()) {
      if (ck->index_.count(name)) {
        return absl::DataLossError(absl::StrCat(file->path(), ": tensor ", name, " also appears in ", ck->index_[name]->file));
      }
      ck->index_[name] = &view;
    }
    ck->files_.push_back(std::move(file));
  }
  if (!weight_map.is_null()) {
    for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
      auto found = ck->index_.find(it.key());
      const std::string want = model_dir + "/" + it->get<std::string>();
      if (found == ck->index_.end() || found->second->file != want) {
        return absl::DataLossError(absl::StrCat(want, ": tensor ", it.key(), " is listed in the index but missing from the file"));
      }
    }
  }
  return ck;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorView*> Checkpoint::Get(const std::string& name, DType dtype,
                                                  const std::vector<int64_t>& shape) const {
  const TensorView* v = Find(name);
  if (!v) return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor ", name));
  if (v->dtype != dtype || v->shape != shape) {
    TensorView want;
    want.shape = shape;
    return absl::DataLossError(absl::StrCat(v->file, ": tensor ", name, " is ", DTypeName(v->dtype), " ",
                                            v->ShapeString(), ", expected ", DTypeName(dtype), " ", want.ShapeString()));
  }
  return v;
}

size_t Checkpoint::total_file_bytes() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->file_size();
  return n;
}

}  // namespace moeserve
