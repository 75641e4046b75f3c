// Every CUDA op against the CPU op it replaces, in the manner of ggml's
// test-backend-ops: random inputs at gpt-oss shapes and awkward sizes, an
// error limit per op (normalized mean squared error), failure on any NaN the
// reference does not have, and guard regions around every output that must
// come back untouched. Label `gpu`; skipped where no CUDA device exists.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cpu/ops.h"
#include "engine/cuda/device.h"
#include "engine/cuda/ops.h"
#include "engine/dtype.h"
#include "engine/fp8.h"

namespace moeserve {
namespace {

constexpr size_t kGuard = 64;            // floats (or elements) on each side of an output
constexpr uint32_t kGuardBits = 0x7fbadbadu;  // a NaN no kernel writes

#define SKIP_WITHOUT_GPU()                                           \
  do {                                                               \
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = F32ToBf16(v[i]);
  return b;
}

// A device copy of a host vector.
template <typename T>
cuda::DeviceBuffer Upload(const std::vector<T>& v) {
  auto b = cuda::DeviceBuffer::Allocate(std::max<size_t>(1, v.size()) * sizeof(T));
  EXPECT_TRUE(b.ok()) << b.status();
  cudaMemcpy(b->get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return std::move(*b);
}

// An output of n elements of T with guard regions on both sides.
template <typename T>
class Guarded {
 public:
  explicit Guarded(size_t n) : n_(n) {
    std::vector<uint32_t> fill((n + 2 * kGuard) * sizeof(T) / 4 + 1, kGuardBits);
    auto b = cuda::DeviceBuffer::Allocate(fill.size() * 4);
    EXPECT_TRUE(b.ok()) << b.status();
    buf_ = std::move(*b);
    cudaMemcpy(buf_.get(), fill.data(), fill.size() * 4, cudaMemcpyHostToDevice);
  }
  T* get() { return buf_.as<T>() + kGuard; }
  // The output; fails the test if a guard changed.
  std::vector<T> Read() {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint32_t> all(buf_.size() / 4);
    cudaMemcpy(all.data(), buf_.get(), buf_.size(), cudaMemcpyDeviceToHost);
    const auto* bytes = reinterpret_cast<const uint8_t*>(all.data());
    std::vector<T> out(n_);
    std::memcpy(out.data(), bytes + kGuard * sizeof(T), n_ * sizeof(T));
    uint32_t w;
    for (size_t i = 0; i < kGuard * sizeof(T); i += 4) {
      std::memcpy(&w, bytes + i, 4);
      EXPECT_EQ(w, kGuardBits) << "write before the output";
      std::memcpy(&w, bytes + (kGuard + n_) * sizeof(T) + i, 4);
      EXPECT_EQ(w, kGuardBits) << "write after the output";
    }
    return out;
  }

 private:
  size_t n_;
  cuda::DeviceBuffer buf_;
};

// sum (a - b)^2 / sum b^2, failing on a NaN the reference does not have.
double Nmse(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i]) && !std::isnan(want[i])) {
      ADD_FAILURE() << "NaN at " << i;
      return INFINITY;
    }
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return den > 0 ? num / den : num;
}

TEST(CudaOps, Embedding) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 1000, hidden = 2880;
  const auto table = ToBf16(Random(vocab * hidden, 1));
  const std::vector<int32_t> ids = {0, 999, 5, 5, 731};
  auto dt = Upload(table);
  auto di = Upload(ids);
  Guarded<float> out(ids.size() * hidden);
  cuda::EmbeddingBf16(dt.as<uint16_t>(), di.as<int32_t>(), ids.size(), hidden, out.get(), nullptr);
  ASSERT_TRUE(cuda::Check("embedding").ok());
  const auto got = out.Read();
  for (size_t r = 0; r < ids.size(); ++r) {
    for (int64_t i = 0; i < hidden; ++i) ASSERT_EQ(got[r * hidden + i], Bf16ToF32(table[ids[r] * hidden + i]));
  }
}

TEST(CudaOps, RmsNorm) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {2880, 17, 4096}) {
    const int rows = 7;
    const auto x = Random(rows * n, 2, 3.0f), w = Random(n, 3);
    std::vector<float> want(rows * n);
    for (int r = 0; r < rows; ++r) cpu::RmsNorm(x.data() + r * n, w.data(), n, 1e-5f, want.data() + r * n);
    auto dx = Upload(x), dw = Upload(w);
    Guarded<float> y(rows * n);
    cuda::RmsNorm(dx.as<float>(), n, dw.as<float>(), rows, n, 1e-5f, y.get(), n, nullptr);
    ASSERT_TRUE(cuda::Check("rmsnorm").ok());
    EXPECT_LT(Nmse(y.Read(), want), 1e-12) << "n=" << n;
  }
}

TEST(CudaOps, LinearBf16) {
  SKIP_WITHOUT_GPU();
  ThreadPool pool(2);
  struct Shape { int64_t rows, k; int tokens; };
  for (Shape s : {Shape{4096, 2880, 1}, Shape{512, 2880, 3}, Shape{2880, 4096, 9}, Shape{201, 64, 17},
                  Shape{32, 2880, 64}}) {
    const auto wf = Random(s.rows * s.k, 4, 0.05f);
    const auto w = ToBf16(wf);
    const auto x = Random(s.tokens * s.k, 5), bias = Random(s.rows, 6);
    Matrix m;
    m.dtype = DType::kBF16;
    m.data = w.data();
    m.rows = s.rows;
    m.cols = s.k;
    std::vector<float> want(s.tokens * s.rows);
    cpu::Linear(pool, m, bias.data(), x.data(), s.k, s.tokens, want.data(), s.rows);
    auto dw = Upload(w);
    auto dx = Upload(x), db = Upload(bias);
    Guarded<float> y(s.tokens * s.rows);
    cuda::LinearBf16(dw.as<uint16_t>(), s.rows, s.k, db.as<float>(), dx.as<float>(), s.k, s.tokens, y.get(), s.rows,
                     nullptr);
    ASSERT_TRUE(cuda::Check("linear").ok());
    EXPECT_LT(Nmse(y.Read(), want), 1e-10) << s.rows << "x" << s.k << " tokens " << s.tokens;
  }
}

TEST(CudaOps, Rope) {
  SKIP_WITHOUT_GPU();
  const int heads = 64, hd = 64, rows = 5;
  std::vector<float> inv_freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv_freq[i] = std::pow(150000.0f, -2.0f * i / hd) / (i > 8 ? 32.0f : 1.0f);
  const std::vector<int64_t> pos = {0, 1, 127, 4096, 131071};
  auto x = Random(rows * heads * hd, 7);
  std::vector<float> want = x;
  std::vector<float> c(hd / 2), s(hd / 2);
  for (int r = 0; r < rows; ++r) {
    cpu::RopeCosSin(pos[r], inv_freq, 1.3466f, c.data(), s.data());
    cpu::ApplyRope(want.data() + r * heads * hd, heads, hd, c.data(), s.data());
  }
  auto dx = Upload(x);
  auto dp = Upload(pos), df = Upload(inv_freq);
  cuda::Rope(dx.as<float>(), heads * hd, rows, heads, hd, dp.as<int64_t>(), df.as<float>(), 1.3466f, nullptr);
  ASSERT_TRUE(cuda::Check("rope").ok());
  cudaDeviceSynchronize();
  std::vector<float> got(x.size());
  cudaMemcpy(got.data(), dx.get(), got.size() * 4, cudaMemcpyDeviceToHost);
  EXPECT_LT(Nmse(got, want), 1e-11);
}

// Attention over a paged cache laid out as engine/kv_cache.h does, against the
// CPU kernel: full and sliding window, bf16, f32 and fp8 (widened to f32 for
// the CPU kernel, as the CPU backend does), short and long rows.
TEST(CudaOps, PagedAttention) {
  SKIP_WITHOUT_GPU();
  const int kvh = 8, group = 8, bs = 16, heads = kvh * group;
  for (int hd : {64, 16}) {
  for (KvDtype kvt : {KvDtype::kBf16, KvDtype::kF32, KvDtype::kFp8}) {
    const bool bf16 = kvt == KvDtype::kBf16, fp8 = kvt == KvDtype::kFp8;
    for (int64_t window : {int64_t{0}, int64_t{128}}) {
      const std::vector<int64_t> pos = {0, 5, 200, 1000};
      const int rows = static_cast<int>(pos.size());
      const int64_t blocks_per_seq = 1000 / bs + 1;
      const int64_t num_blocks = blocks_per_seq * rows + 3;
      const size_t elt = KvDtypeBytes(kvt), row_elems = kvh * hd;
      // Random cache contents; each row's sequence gets a shuffled run of blocks.
      std::vector<uint8_t> cache(num_blocks * 2 * bs * row_elems * elt);
      const auto vals = Random(num_blocks * 2 * bs * row_elems, 8);
      for (size_t i = 0; i < vals.size(); ++i) {
        if (bf16) reinterpret_cast<uint16_t*>(cache.data())[i] = F32ToBf16(vals[i]);
        else if (fp8) cache[i] = F32ToE4m3(vals[i]);
        else reinterpret_cast<float*>(cache.data())[i] = vals[i];
      }
      // The CPU kernel reads f32 (or bf16) rows: fp8 rows are widened first.
      std::vector<float> widened;
      if (fp8) {
        widened.resize(cache.size());
        for (size_t i = 0; i < cache.size(); ++i) widened[i] = E4m3ToF32(cache[i]);
      }
      const uint8_t* ref_base = fp8 ? reinterpret_cast<const uint8_t*>(widened.data()) : cache.data();
      const size_t ref_elt = fp8 ? 4 : elt;
      std::vector<int32_t> tables;
      std::vector<int64_t> offsets;
      std::mt19937 rng(9);
      std::vector<int32_t> perm(num_blocks);
      for (int i = 0; i < num_blocks; ++i) perm[i] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int r = 0; r < rows; ++r) {
        offsets.push_back(static_cast<int64_t>(tables.size()));
        for (int64_t b = 0; b < blocks_per_seq; ++b) tables.push_back(perm[r * blocks_per_seq + b]);
      }
      const auto q = Random(rows * heads * hd, 10), sinks = Random(heads, 11);
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
      std::vector<float> want(rows * heads * hd);
      for (int r = 0; r < rows; ++r) {
        const int64_t first = window > 0 ? std::max<int64_t>(0, pos[r] - window + 1) : 0;
        const int64_t n = pos[r] - first + 1;
        for (int g = 0; g < kvh; ++g) {
          std::vector<const void*> kr(n), vr(n);
          for (int64_t j = first; j <= pos[r]; ++j) {
            const int64_t block = tables[offsets[r] + j / bs], slot = j % bs;
            kr[j - first] = ref_base + (((block * 2 + 0) * bs + slot) * row_elems + g * hd) * ref_elt;
            vr[j - first] = ref_base + (((block * 2 + 1) * bs + slot) * row_elems + g * hd) * ref_elt;
          }
          std::vector<float> scratch(n * group + 16);
          cpu::AttendGeneric(q.data() + (r * heads + g * group) * hd, group, hd, kr.data(), vr.data(), n, bf16,
                             sinks.data() + g * group, scale, scratch.data(), want.data() + (r * heads + g * group) * hd);
        }
      }
      auto dc = Upload(cache);
      auto dq = Upload(q), ds = Upload(sinks);
      auto dp = Upload(pos), doff = Upload(offsets);
      auto dt = Upload(tables);
      Guarded<float> out(rows * heads * hd);
      cuda::KvLayer kv{dc.get(), bs, kvh, hd, kvt};
      ASSERT_TRUE(cuda::PagedAttention(kv, dq.as<float>(), heads * hd, rows, heads, dp.as<int64_t>(),
                                       dt.as<int32_t>(), doff.as<int64_t>(), window, ds.as<float>(), scale,
                                       out.get(), heads * hd, nullptr)
                      .ok());
      ASSERT_TRUE(cuda::Check("attention").ok());
      EXPECT_LT(Nmse(out.Read(), want), 1e-10) << "head_dim " << hd << " dtype " << KvDtypeBytes(kvt) << " window " << window;
    }
  }
  }
  cuda::KvLayer odd{nullptr, 16, 8, 512, KvDtype::kBf16};
  EXPECT_FALSE(cuda::PagedAttention(odd, nullptr, 0, 1, 64, nullptr, nullptr, nullptr, 0, nullptr, 1, nullptr, 0,
                                    nullptr)
                   .ok());
}

TEST(CudaOps, KvWriteThenRead) {
  SKIP_WITHOUT_GPU();
  const int kvh = 8, hd = 64, bs = 16, rows = 5;
  const int64_t num_blocks = 4;
  for (KvDtype dt : {KvDtype::kBf16, KvDtype::kF32, KvDtype::kFp8}) {
    const size_t elt = KvDtypeBytes(dt), row_elems = kvh * hd;
    const size_t bytes = num_blocks * 2 * bs * row_elems * elt;
    Guarded<uint8_t> cache(bytes);
    cudaMemset(cache.get(), 0, bytes);
    const auto k = Random(rows * row_elems, 12), v = Random(rows * row_elems, 13);
    const std::vector<int64_t> slot = {0, 17, 63, -1, 35};
    auto dk = Upload(k), dv = Upload(v);
    auto ds = Upload(slot);
    cuda::KvWrite({cache.get(), bs, kvh, hd, dt}, dk.as<float>(), row_elems, dv.as<float>(), row_elems,
                  ds.as<int64_t>(), rows, nullptr);
    ASSERT_TRUE(cuda::Check("kv write").ok());
    const auto got = cache.Read();
    for (int r = 0; r < rows; ++r) {
      if (slot[r] < 0) continue;
      const int64_t block = slot[r] / bs, off = slot[r] % bs;
      for (int which = 0; which < 2; ++which) {
        const uint8_t* row = got.data() + ((block * 2 + which) * bs + off) * row_elems * elt;
        for (size_t i = 0; i < row_elems; ++i) {
          const float want = (which ? v : k)[r * row_elems + i];
          if (dt == KvDtype::kFp8) {
            ASSERT_EQ(row[i], F32ToE4m3(want));
          } else if (dt == KvDtype::kBf16) {
            ASSERT_EQ(Bf16ToF32(reinterpret_cast<const uint16_t*>(row)[i]), Bf16ToF32(F32ToBf16(want)));
          } else {
            ASSERT_EQ(reinterpret_cast<const float*>(row)[i], want);
          }
        }
      }
    }
  }
}

TEST(CudaOps, TopKSoftmax) {
  SKIP_WITHOUT_GPU();
  for (int experts : {32, 128, 7}) {
    const int rows = 33, k = std::min(4, experts);
    auto logits = Random(rows * experts, 14);
    for (int e = 0; e < experts; e += 3) logits[e] = logits[1];  // ties in row 0: lower id first
    std::vector<int32_t> want_idx(rows * k);
    std::vector<float> want_w(rows * k);
    std::vector<int> idx(k);
    for (int r = 0; r < rows; ++r) {
      cpu::TopKSoftmax(logits.data() + r * experts, experts, k, idx.data(), want_w.data() + r * k);
      for (int s = 0; s < k; ++s) want_idx[r * k + s] = idx[s];
    }
    auto dl = Upload(logits);
    Guarded<int32_t> gi(rows * k);
    Guarded<float> gw(rows * k);
    ASSERT_TRUE(cuda::TopKSoftmax(dl.as<float>(), rows, experts, k, gi.get(), gw.get(), nullptr).ok());
    ASSERT_TRUE(cuda::Check("topk").ok());
    EXPECT_EQ(gi.Read(), want_idx) << experts << " experts";
    EXPECT_LT(Nmse(gw.Read(), want_w), 1e-12);
  }
  EXPECT_FALSE(cuda::TopKSoftmax(nullptr, 1, 300, 4, nullptr, nullptr, nullptr).ok());
  EXPECT_FALSE(cuda::TopKSoftmax(nullptr, 1, 32, 9, nullptr, nullptr, nullptr).ok());
}

// MXFP4 experts against cpu::ExpertGemm on the same bytes (incl. every FP4 code and a spread of scales).
TEST(CudaOps, ExpertMxfp4) {
  SKIP_WITHOUT_GPU();
  const int experts = 4;
  const int64_t rows = 5760, k = 2880;  // gpt-oss gate_up
  std::mt19937 rng(15);
  std::vector<uint8_t> blocks(experts * rows * (k / 32) * 16), scales(experts * rows * (k / 32));
  for (auto& b : blocks) b = static_cast<uint8_t>(rng());
  for (auto& s : scales) s = static_cast<uint8_t>(118 + rng() % 12);
  std::vector<float> bias = Random(experts * rows, 16);
  const auto x = Random(3 * k, 17);
  const std::vector<int32_t> pair_row = {0, 0, 1, 2, 2}, pair_expert = {3, 0, 1, 1, 2};
  const int pairs = static_cast<int>(pair_row.size());
  ExpertMatrix m;
  m.mxfp4 = true;
  m.blocks = blocks.data();
  m.scales = scales.data();
  m.num_experts = experts;
  m.rows = rows;
  m.cols = k;
  m.bias = bias;
  std::vector<float> want(pairs * rows), xp(k);
  for (int p = 0; p < pairs; ++p) {
    cpu::PermuteForMxfp4(x.data() + pair_row[p] * k, xp.data(), k);
    cpu::ExpertGemm(m, pair_expert[p], xp.data(), k, 1, 0, rows, want.data() + p * rows, rows);
  }
  auto db = Upload(blocks), dsc = Upload(scales);
  auto dbias = Upload(bias), dx = Upload(x);
  auto dr = Upload(pair_row), de = Upload(pair_expert);
  Guarded<float> y(pairs * rows);
  cuda::ExpertMxfp4(db.as<uint8_t>(), dsc.as<uint8_t>(), dbias.as<float>(), rows, k, dx.as<float>(), k,
                    dr.as<int32_t>(), de.as<int32_t>(), pairs, y.get(), rows, nullptr);
  ASSERT_TRUE(cuda::Check("expert mxfp4").ok());
  EXPECT_LT(Nmse(y.Read(), want), 1e-10);
}

TEST(CudaOps, SwiGluAndCombine) {
  SKIP_WITHOUT_GPU();
  const int rows = 6, k = 4;
  const int64_t n = 2880;
  const auto gu = Random(rows * 2 * n, 18, 5.0f);  // wide: the clamps at 7 matter
  std::vector<float> want(rows * n);
  for (int r = 0; r < rows; ++r) cpu::SwiGlu(gu.data() + r * 2 * n, n, 7.0f, 1.702f, want.data() + r * n);
  auto dg = Upload(gu);
  Guarded<float> out(rows * n);
  cuda::SwiGlu(dg.as<float>(), 2 * n, rows, n, 7.0f, 1.702f, out.get(), n, nullptr);
  ASSERT_TRUE(cuda::Check("swiglu").ok());
  EXPECT_LT(Nmse(out.Read(), want), 1e-12);

  const int tokens = 3;
  const auto y = Random(tokens * k * n, 19), w = Random(tokens * k, 20);
  std::vector<float> want_x(tokens * n);
  for (int r = 0; r < tokens; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      float acc = 0.0f;
      for (int s = 0; s < k; ++s) acc += w[r * k + s] * y[(r * k + s) * n + i];
      want_x[r * n + i] = acc;
    }
  }
  auto dy = Upload(y), dw = Upload(w);
  Guarded<float> combined(tokens * n);
  cuda::MoeCombine(dy.as<float>(), n, dw.as<float>(), tokens, k, n, combined.get(), n, nullptr);
  ASSERT_TRUE(cuda::Check("combine").ok());
  EXPECT_LT(Nmse(combined.Read(), want_x), 1e-12);
}

TEST(CudaOps, ArgmaxLogprob) {
  SKIP_WITHOUT_GPU();
  const int rows = 4;
  const int64_t vocab = 201088;
  auto logits = Random(rows * vocab, 22, 4.0f);
  logits[1 * vocab + 77] = logits[1 * vocab + 99] = 100.0f;  // a tie: the lower id
  std::vector<int32_t> want_ids(rows);
  std::vector<float> want_lp(rows);
  for (int r = 0; r < rows; ++r) {
    const float* row = logits.data() + r * vocab;
    int best = 0;
    for (int64_t i = 1; i < vocab; ++i) best = row[i] > row[best] ? static_cast<int>(i) : best;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - row[best]);
    want_ids[r] = best;
    want_lp[r] = static_cast<float>(-std::log(sum));
  }
  auto dl = Upload(logits);
  Guarded<int32_t> ids(rows);
  Guarded<float> lp(rows);
  cuda::ArgmaxLogprob(dl.as<float>(), rows, vocab, ids.get(), lp.get(), nullptr);
  ASSERT_TRUE(cuda::Check("argmax").ok());
  EXPECT_EQ(ids.Read(), want_ids);
  EXPECT_EQ(want_ids[1], 77);
  EXPECT_LT(Nmse(lp.Read(), want_lp), 1e-10);
}

// Structured output's token masks: every excluded logit -inf, every other one
// untouched, rows without constraint (all bits set) unchanged; a vocabulary
// that does not fill its last word.
TEST(CudaOps, MaskLogits) {
  SKIP_WITHOUT_GPU();
  const int rows = 3;
  const int64_t vocab = 201088 + 5, words = (vocab + 31) / 32;
  auto logits = Random(rows * vocab, 23, 3.0f);
  std::vector<uint32_t> masks(rows * words, 0xffffffffu);
  std::mt19937 rng(24);
  for (int64_t w = 0; w < words; ++w) masks[1 * words + w] = rng();             // row 1: half the tokens
  for (int64_t w = 0; w < words; ++w) masks[2 * words + w] = 0;                 // row 2: three tokens
  for (int64_t t : {int64_t{0}, int64_t{200007}, vocab - 1}) masks[2 * words + t / 32] |= 1u << (t % 32);
  std::vector<float> want = logits;
  for (int r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < vocab; ++t) {
      if (!((masks[r * words + t / 32] >> (t % 32)) & 1u)) want[r * vocab + t] = -INFINITY;
    }
  }
  Guarded<float> out(rows * vocab);
  cudaMemcpy(out.get(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice);
  auto dm = Upload(masks);
  cuda::MaskLogits(out.get(), rows, vocab, dm.as<uint32_t>(), words, nullptr);
  ASSERT_TRUE(cuda::Check("mask").ok());
  const std::vector<float> got = out.Read();
  int64_t kept = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << i;
    kept += std::isfinite(want[i]);
  }
  EXPECT_GT(kept, vocab + 3);
}

TEST(CudaDevice, DescribesEveryDevice) {
  const int n = cuda::DeviceCount();
  if (n == 0) GTEST_SKIP() << "no CUDA device";
  for (int d = 0; d < n; ++d) {
    auto info = cuda::Describe(d);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_FALSE(info->name.empty());
    EXPECT_GE(info->compute_major, 8) << "Ampere or newer";
    EXPECT_GT(info->total_bytes, info->free_bytes / 2);
  }
  auto too_big = cuda::DeviceBuffer::Allocate(size_t{1} << 50);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace moeserve
