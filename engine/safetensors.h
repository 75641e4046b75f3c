// Reading safetensors checkpoints: memory-mapped, zero-copy, strictly checked.
//
// A SafetensorsFile maps one file read-only and exposes each tensor as a view
// into the mapping; nothing is copied. Opening validates the whole header
// (JSON, dtypes, shapes, offsets inside the data section, no overlaps), so a
// truncated or corrupt file fails with a message naming the file and tensor.
// A Checkpoint is the set of shards of a model directory, found through
// `model.safetensors.index.json` or, without an index, `model.safetensors`.
//
// Thread-safety: immutable after opening; views stay valid while the owning
// object lives.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "base/status.h"

namespace moeserve {

struct TensorView {
  std::string name;
  std::string file;  // the shard it lives in, for error messages
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string ShapeString() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const TensorView* Find(const std::string& name) const;
  size_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  // The tensor, checked for dtype and shape; errors name file and tensor.
  absl::StatusOr<const TensorView*> Get(const std::string& name, DType dtype,
                                        const std::vector<int64_t>& shape) const;
  // The tensor without checks, or nullptr.
  const TensorView* Find(const std::string& name) const;
  // Bytes of all shard files together.
  size_t total_file_bytes() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace moeserve
