#include "engine/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/cpu/kernels.h"

namespace moeserve::cpu {

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * w[i];
}

void LinearRows(const Matrix& w, const float* bias, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
                int64_t o_end, float* y, int64_t ldy) {
  const Kernels& k = ActiveKernels();
  if (w.dtype == DType::kBF16) {
    k.gemm_bf16(static_cast<const uint16_t*>(w.data), w.cols, x, ldx, num_tokens, o_begin, o_end, y, ldy);
  } else {
    k.gemm_f32(static_cast<const float*>(w.data), w.cols, x, ldx, num_tokens, o_begin, o_end, y, ldy);
  }
  if (bias) {
    for (int t = 0; t < num_tokens; ++t)
      for (int64_t o = o_begin; o < o_end; ++o) y[t * ldy + o] += bias[o];
  }
}

void Linear(ThreadPool& pool, const Matrix& w, const float* bias, const float* x, int64_t ldx, int num_tokens,
            float* y, int64_t ldy) {
  // Grain of 16 rows keeps the 4-row register blocking and enough chunks to balance.
  pool.ParallelFor(w.rows, 16, [&](int64_t b, int64_t e) { LinearRows(w, bias, x, ldx, num_tokens, b, e, y, ldy); });
}

void LinearMany(ThreadPool& pool, std::span<const LinearOut> outs, const float* x, int64_t ldx,
                int num_tokens) {
  // One row space over all outputs: [0, rows_0) [rows_0, rows_0 + rows_1) ...
  const std::span<const LinearOut> v = outs;
  int64_t total = 0;
  for (const LinearOut& o : v) total += o.w->rows;
  pool.ParallelFor(total, 16, [&](int64_t b, int64_t e) {
    int64_t base = 0;
    for (const LinearOut& o : v) {
      const int64_t lo = std::max(b, base), hi = std::min(e, base + o.w->rows);
      if (lo < hi) LinearRows(*o.w, o.bias, x, ldx, num_tokens, lo - base, hi - base, o.y, o.ldy);
      base += o.w->rows;
    }
  });
}

void RopeCosSin(int64_t pos, const std::vector<float>& inv_freq, float mscale, float* cos, float* sin) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float theta = static_cast<float>(pos) * inv_freq[i];
    cos[i] = std::cos(theta) * mscale;
    sin[i] = std::sin(theta) * mscale;
  }
}

void RopeCosSinGgml(int64_t pos, int head_dim, float base, bool yarn, float factor, float low, float high,
                    float* cos, float* sin) {
  const float theta_scale = std::pow(base, -2.0f / static_cast<float>(head_dim));
  const float freq_scale = yarn ? 1.0f / factor : 1.0f;
  const float mscale = yarn ? 1.0f + 0.1f * std::log(1.0f / freq_scale) : 1.0f;
  float theta_extrap = static_cast<float>(pos);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float theta_interp = freq_scale * theta_extrap;
    float theta = theta_interp;
    if (yarn) {
      const float y = (static_cast<float>(i) - low) / std::max(0.001f, high - low);
      const float ramp_mix = 1.0f - std::min(1.0f, std::max(0.0f, y));
      theta = theta_interp * (1.0f - ramp_mix) + theta_extrap * ramp_mix;
    }
    cos[i] = std::cos(theta) * mscale;
    sin[i] = std::sin(theta) * mscale;
    theta_extrap *= theta_scale;
  }
}

void ApplyRope(float* v, int num_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < num_heads; ++h) {
    float* a = v + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float x1 = a[i], x2 = a[i + half];
      a[i] = x1 * cos[i] - x2 * sin[i];
      a[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

void SwiGlu(const float* gate_up, int64_t n, float limit, float alpha, float* out) {
  ActiveKernels().swiglu(gate_up, n, limit, alpha, out);
}

void TopKSoftmax(const float* logits, int num_experts, int k, int* idx, float* weight) {
  // k is small (4): selection by repeated scans keeps the tie order stable.
  std::vector<bool> taken(num_experts, false);
  for (int s = 0; s < k; ++s) {
    int best = -1;
    for (int e = 0; e < num_experts; ++e) {
      if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = e;
    }
    taken[best] = true;
    idx[s] = best;
  }
  const float m = logits[idx[0]];
  float sum = 0.0f;
  for (int s = 0; s < k; ++s) sum += weight[s] = std::exp(logits[idx[s]] - m);
  for (int s = 0; s < k; ++s) weight[s] /= sum;
}

namespace {

// Dense experts in HF layout W[in, out]: y[t, o] = sum_i x[t, i] W[i, o].
template <typename T>
void DenseExpert(const T* w, int64_t in, int64_t out, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
                 int64_t o_end, float* y, int64_t ldy) {
  const int64_t n = o_end - o_begin;
  std::vector<float> acc(n);
  for (int t = 0; t < num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const float* xt = x + t * ldx;
    for (int64_t i = 0; i < in; ++i) {
      const float xi = xt[i];
      const T* row = w + i * out + o_begin;
      for (int64_t o = 0; o < n; ++o) {
        if constexpr (sizeof(T) == 2) acc[o] += Bf16ToF32(row[o]) * xi;
        else acc[o] += row[o] * xi;
      }
    }
    std::copy(acc.begin(), acc.end(), y + t * ldy + o_begin);
  }
}

}  // namespace

void ExpertGemm(const ExpertMatrix& m, int expert, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
                int64_t o_end, float* y, int64_t ldy) {
  if (m.mxfp4) {
    const int64_t groups = m.cols / 32;
    const size_t off = static_cast<size_t>(expert) * m.rows * groups;
    ActiveKernels().gemm_mxfp4(m.blocks + off * 16, m.scales + off, m.cols, x, ldx, num_tokens, o_begin, o_end, y, ldy);
  } else if (m.dtype == DType::kBF16) {
    DenseExpert(static_cast<const uint16_t*>(m.dense) + static_cast<size_t>(expert) * m.rows * m.cols, m.cols, m.rows,
                x, ldx, num_tokens, o_begin, o_end, y, ldy);
  } else {
    DenseExpert(static_cast<const float*>(m.dense) + static_cast<size_t>(expert) * m.rows * m.cols, m.cols, m.rows, x,
                ldx, num_tokens, o_begin, o_end, y, ldy);
  }
  const float* b = m.bias.data() + static_cast<size_t>(expert) * m.rows;
  for (int t = 0; t < num_tokens; ++t)
    for (int64_t o = o_begin; o < o_end; ++o) y[t * ldy + o] += b[o];
}

void LoraApply(ThreadPool* pool, const LoraFactors& f, int64_t e, const float* x, int64_t ldx,
               std::span<const int32_t> x_rows, float* y, int64_t ldy, std::span<const int32_t> y_rows) {
  const int n = static_cast<int>(x_rows.size());
  if (n == 0 || f.empty() || !f.active[e]) return;
  thread_local std::vector<float> xg, t, u;
  xg.resize(static_cast<size_t>(n) * f.in);
  t.resize(static_cast<size_t>(n) * f.rank);
  u.resize(static_cast<size_t>(n) * f.out);
  for (int i = 0; i < n; ++i) {
    std::memcpy(xg.data() + static_cast<size_t>(i) * f.in, x + static_cast<size_t>(x_rows[i]) * ldx, f.in * sizeof(float));
  }
  // Shrink: t = A_e x, scaled (rows split over the pool for prefill chunks).
  const Matrix a = f.A(e);
  const float* xp = xg.data();
  float* tp0 = t.data();
  auto shrink = [&, xp, tp0](int64_t r0, int64_t r1) {
    LinearRows(a, nullptr, xp + r0 * f.in, f.in, static_cast<int>(r1 - r0), 0, f.rank, tp0 + r0 * f.rank, f.rank);
    for (int64_t i = r0 * f.rank; i < r1 * f.rank; ++i) tp0[i] *= f.scale[e];
  };
  if (pool && n >= 32) {
    pool->ParallelFor(n, 8, shrink);
  } else {
    shrink(0, n);
  }
  // Expand: y += B_e t.
  const float* tp = t.data();
  float* up = u.data();
  auto expand = [&, tp, up](int64_t o0, int64_t o1) {
    LinearRows(f.B(e), nullptr, tp, f.rank, n, o0, o1, up, f.out);
    for (int i = 0; i < n; ++i) {
      float* yr = y + static_cast<size_t>(y_rows[i]) * ldy;
      const float* ur = up + static_cast<size_t>(i) * f.out;
      for (int64_t o = o0; o < o1; ++o) yr[o] += ur[o];
    }
  };
  if (pool && f.out >= 256) {
    pool->ParallelFor(f.out, 64, expand);
  } else {
    expand(0, f.out);
  }
}

void ExpertPairs(ThreadPool& pool, const ExpertMatrix& gate_up, const ExpertMatrix& down, float limit, float alpha,
                 const float* h, int64_t ldh, std::span<const int32_t> pair_row, std::span<const int32_t> pair_expert,
                 float* y, int64_t ldy, const ExpertLora* lora) {
  const int64_t hs = down.rows, inter = down.cols;
  const int ne = static_cast<int>(gate_up.num_experts);
  const bool mxfp4 = gate_up.mxfp4;
  // Pairs grouped by expert: expert a's pairs are gathered rows [offset, offset + count).
  std::vector<std::vector<int>> by_expert(ne);
  for (size_t p = 0; p < pair_expert.size(); ++p) {
    if (pair_expert[p] >= 0) by_expert[pair_expert[p]].push_back(static_cast<int>(p));
  }
  struct Active {
    int expert, offset, count;
  };
  std::vector<Active> active;
  std::vector<int> gathered;  // pair of each gathered row
  for (int e = 0; e < ne; ++e) {
    if (by_expert[e].empty()) continue;
    active.push_back({e, static_cast<int>(gathered.size()), static_cast<int>(by_expert[e].size())});
    gathered.insert(gathered.end(), by_expert[e].begin(), by_expert[e].end());
  }
  const int total = static_cast<int>(gathered.size());
  if (total == 0) return;
  // Inputs (permuted for MXFP4 so nibbles meet contiguous activations).
  std::vector<float> xin(static_cast<size_t>(total) * hs);
  pool.ParallelFor(total, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* src = h + static_cast<size_t>(pair_row[gathered[r]]) * ldh;
      float* dst = xin.data() + static_cast<size_t>(r) * hs;
      if (mxfp4) PermuteForMxfp4(src, dst, hs);
      else std::memcpy(dst, src, hs * sizeof(float));
    }
  });
  // Runs `m` for every active expert, split into row chunks, in one parallel region.
  auto run_experts = [&](const ExpertMatrix& m, const float* in, int64_t ld_in, float* outp, int64_t ld_out) {
    constexpr int64_t kChunk = 128;
    const int64_t chunks = (m.rows + kChunk - 1) / kChunk;
    pool.Run(static_cast<int>(active.size() * chunks), [&](int task) {
      const Active& a = active[task / chunks];
      const int64_t b = (task % chunks) * kChunk, e = std::min(m.rows, b + kChunk);
      ExpertGemm(m, a.expert, in + static_cast<size_t>(a.offset) * ld_in, ld_in, a.count, b, e,
                 outp + static_cast<size_t>(a.offset) * ld_out, ld_out);
    });
  };
  // LoRA: each active expert's gathered rows, grouped by adapter, get the
  // adapter's update of `target` from `in` (rows as `in_row` maps them).
  const LoraTarget kGateUp = LoraTarget::kGateUp;
  auto run_lora = [&](LoraTarget target, const float* in, int64_t ld_in, bool in_by_pair_row, float* outp,
                      int64_t ld_out) {
    pool.Run(static_cast<int>(active.size()), [&](int task) {
      const Active& a = active[task];
      thread_local std::vector<int32_t> x_rows, y_rows;
      // Slots in first-seen order; a step rarely has more than a few.
      for (int r = a.offset; r < a.offset + a.count; ++r) {
        const int32_t slot = lora->pair_adapter[gathered[r]];
        bool first = slot >= 0;
        for (int q = a.offset; q < r && first; ++q) first = lora->pair_adapter[gathered[q]] != slot;
        if (!first || !lora->adapters[slot]) continue;
        x_rows.clear();
        y_rows.clear();
        for (int q = r; q < a.offset + a.count; ++q) {
          if (lora->pair_adapter[gathered[q]] != slot) continue;
          x_rows.push_back(in_by_pair_row ? pair_row[gathered[q]] : q);
          y_rows.push_back(q);
        }
        LoraApply(nullptr, lora->adapters[slot]->factors(lora->layer, target), a.expert, in, ld_in, x_rows, outp,
                  ld_out, y_rows);
      }
    });
  };
  std::vector<float> gu(static_cast<size_t>(total) * 2 * inter);
  run_experts(gate_up, xin.data(), hs, gu.data(), 2 * inter);
  if (lora) run_lora(kGateUp, h, ldh, /*in_by_pair_row=*/true, gu.data(), 2 * inter);
  std::vector<float> act(static_cast<size_t>(total) * inter);
  // The down projection's LoRA reads SwiGLU's output in its natural order.
  std::vector<float> act_plain(lora && mxfp4 ? static_cast<size_t>(total) * inter : 0);
  pool.ParallelFor(total, 1, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(inter);
    for (int64_t r = b; r < e; ++r) {
      float* dst = act.data() + static_cast<size_t>(r) * inter;
      const float* src = gu.data() + static_cast<size_t>(r) * 2 * inter;
      if (mxfp4) {
        float* plain = act_plain.empty() ? tmp.data() : act_plain.data() + static_cast<size_t>(r) * inter;
        SwiGlu(src, inter, limit, alpha, plain);
        PermuteForMxfp4(plain, dst, inter);
      } else {
        SwiGlu(src, inter, limit, alpha, dst);
      }
    }
  });
  std::vector<float> out(static_cast<size_t>(total) * hs);
  run_experts(down, act.data(), inter, out.data(), hs);
  if (lora) {
    run_lora(LoraTarget::kDown, act_plain.empty() ? act.data() : act_plain.data(), inter, /*in_by_pair_row=*/false,
             out.data(), hs);
  }
  pool.ParallelFor(total, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      std::memcpy(y + static_cast<size_t>(gathered[r]) * ldy, out.data() + static_cast<size_t>(r) * hs, hs * sizeof(float));
    }
  });
}

}  // namespace moeserve::cpu
