// The real moeserve-worker process over real gRPC on loopback: Describe,
// Health, and an Execute stream carrying a chunked prefill, decode steps with
// block-table diffs and a second sequence joining mid-way. Sampled tokens
// must equal the same schedule run on the engine in this process; bad steps
// get an error and the worker keeps serving.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <numeric>
#include <thread>

#include "engine/cpu/cpu_backend.h"
#include "engine/sampler.h"
#include "moeserve/worker/v1/worker.grpc.pb.h"
#include "tests/test_util.h"
#include "tests/worker_process.h"

namespace moeserve {
namespace {

namespace v1 = moeserve::worker::v1;

// The checkpoint on the engine in this process, with the worker's block size.
std::unique_ptr<CpuBackend> ReferenceEngine(const std::string& dir, KvDtype kv_dtype = KvDtype::kBf16) {
  auto w = LoadModelWeights(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  CpuOptions mo;
  mo.num_threads = 2;
  mo.kv.dtype = kv_dtype;
  mo.kv.block_size = 4;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = 64;
  return std::make_unique<CpuBackend>(std::move(*w), mo);
}

TEST(WorkerGrpcTest, ExecutesStepsLikeTheEngine) {
  const std::string dir = testing::TinyCheckpoint("worker", "mxfp4", "bf16", 1.0);
  // A vocabulary of its own: the model's stop ids are config.json's and generation_config.json's.
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [7, 200002, 9]})";
  testing::WorkerProcess proc(dir, {"--kv-cache-memory", "16MiB", "--block-size", "4", "--max-num-seqs", "4"});
  ASSERT_FALSE(proc.address().empty()) << "worker did not start";
  auto channel = grpc::CreateChannel(proc.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Worker::NewStub(channel);

  {
    grpc::ClientContext ctx;
    v1::DescribeResponse d;
    ASSERT_TRUE(stub->Describe(&ctx, v1::DescribeRequest(), &d).ok());
    EXPECT_EQ(d.vocab_size(), 512);
    EXPECT_EQ(d.block_size(), 4);
    EXPECT_EQ(d.sliding_window(), 8);
    EXPECT_GT(d.full().num_blocks(), 16);
    // 4 sequences' windows (2 blocks + 2), or an eighth of the 16 MiB if more.
    EXPECT_EQ(d.sliding().num_blocks(), std::max<int64_t>(4 * (2 + 2), (int64_t{16} << 20) / 8 / d.sliding().bytes_per_block()));
    EXPECT_EQ(d.full().num_layers(), 2);
    EXPECT_EQ(std::vector<int32_t>(d.eos_token_ids().begin(), d.eos_token_ids().end()),
              (std::vector<int32_t>{200002, 7, 9}));
    grpc::ClientContext hctx;
    v1::HealthResponse h;
    ASSERT_TRUE(stub->Health(&hctx, v1::HealthRequest(), &h).ok());
    EXPECT_TRUE(h.ok());
  }

  // The schedule: sequence 1 (20 prompt tokens) prefills 12 + 8, then decodes;
  // sequence 2 (5 tokens) joins at step 3. Greedy. Full blocks: seq 1 uses 0.., seq 2 uses 40..;
  // sliding blocks (a pool of 16): seq 1 uses 0.., seq 2 uses 8..
  const std::vector<int32_t> p1 = testing::RandomTokens(20, 500, 1), p2 = testing::RandomTokens(5, 500, 2);
  const int kSteps = 8;
  auto blocks_for = [](int base, int64_t tokens) {
    std::vector<int32_t> b((tokens + 3) / 4);
    std::iota(b.begin(), b.end(), base);
    return b;
  };

  // Reference: the same steps on the engine in this process.
  std::vector<int32_t> want1, want2;
  {
    std::unique_ptr<CpuBackend> engine = ReferenceEngine(dir);
    CpuBackend& m = *engine;
    std::vector<int32_t> t1 = p1, t2 = p2;
    int64_t c1 = 0, c2 = 0;
    for (int step = 0; step < kSteps; ++step) {
      std::vector<SequenceInput> batch;
      const int64_t n1 = step == 0 ? 12 : step == 1 ? 8 : 1;
      auto tab1 = blocks_for(0, c1 + n1), tab2 = blocks_for(40, c2 + (step == 2 ? 5 : 1));
      auto stab1 = blocks_for(0, c1 + n1), stab2 = blocks_for(8, c2 + (step == 2 ? 5 : 1));
      SequenceInput a;
      a.tokens = std::span<const int32_t>(t1).subspan(c1, n1);
      a.start_pos = c1;
      a.block_tables[0] = tab1;
      a.block_tables[1] = stab1;
      batch.push_back(a);
      if (step >= 2) {
        SequenceInput b;
        const int64_t n2 = step == 2 ? 5 : 1;
        b.tokens = std::span<const int32_t>(t2).subspan(c2, n2);
        b.start_pos = c2;
        b.block_tables[0] = tab2;
        b.block_tables[1] = stab2;
        batch.push_back(b);
      }
      ForwardOutput out;
      ASSERT_TRUE(m.Forward(batch, &out).ok());
      c1 += n1;
      if (c1 == static_cast<int64_t>(t1.size())) {
        const float* row = out.Row(0);
        t1.push_back(static_cast<int32_t>(std::max_element(row, row + out.vocab_size) - row));
        want1.push_back(t1.back());
      }
      if (step >= 2) {
        c2 += step == 2 ? 5 : 1;
        const float* row = out.Row(1);
        t2.push_back(static_cast<int32_t>(std::max_element(row, row + out.vocab_size) - row));
        want2.push_back(t2.back());
      }
    }
  }

  grpc::ClientContext ctx;
  auto stream = stub->Execute(&ctx);
  std::vector<int32_t> got1, got2;
  int64_t c1 = 0, c2 = 0;
  size_t blocks1 = 0, blocks2 = 0;
  for (int step = 0; step < kSteps; ++step) {
    v1::StepRequest req;
    req.set_step_id(step);
    const int64_t n1 = step == 0 ? 12 : step == 1 ? 8 : 1;
    const auto tab1 = blocks_for(0, c1 + n1);
    if (step == 0) {
      v1::NewSequence* s = req.add_new_sequences();
      s->set_id(1);
      for (int32_t t : p1) s->add_tokens(t);
      s->set_num_scheduled(n1);
      s->set_num_prompt_tokens(20);
      for (int32_t b : tab1) s->add_full_blocks(b), s->add_sliding_blocks(b);
    } else {
      v1::RunningSequence* s = req.add_running();
      s->set_id(1);
      s->set_num_scheduled(n1);
      for (size_t b = blocks1; b < tab1.size(); ++b) s->add_new_full_blocks(tab1[b]), s->add_new_sliding_blocks(tab1[b]);
    }
    blocks1 = tab1.size();
    if (step >= 2) {
      const int64_t n2 = step == 2 ? 5 : 1;
      const auto tab2 = blocks_for(40, c2 + n2);
      if (step == 2) {
        v1::NewSequence* s = req.add_new_sequences();
        s->set_id(2);
        for (int32_t t : p2) s->add_tokens(t);
        s->set_num_scheduled(n2);
        s->set_num_prompt_tokens(5);
        for (int32_t b : tab2) s->add_full_blocks(b), s->add_sliding_blocks(b - 32);
      } else {
        v1::RunningSequence* s = req.add_running();
        s->set_id(2);
        s->set_num_scheduled(n2);
        for (size_t b = blocks2; b < tab2.size(); ++b) s->add_new_full_blocks(tab2[b]), s->add_new_sliding_blocks(tab2[b] - 32);
      }
      blocks2 = tab2.size();
      c2 += n2;
    }
    c1 += n1;
    ASSERT_TRUE(stream->Write(req));
    v1::StepResult res;
    ASSERT_TRUE(stream->Read(&res));
    ASSERT_EQ(res.error(), "") << "step " << step;
    EXPECT_EQ(res.step_id(), static_cast<uint64_t>(step));
    EXPECT_GT(res.total_ns(), 0);
    for (const auto& s : res.samples()) (s.id() == 1 ? got1 : got2).push_back(s.token());
  }
  EXPECT_EQ(got1, want1);
  EXPECT_EQ(got2, want2);
  ASSERT_EQ(got1.size(), 7u);
  ASSERT_EQ(got2.size(), 6u);

  // Bad steps: an unknown sequence, a token outside the vocabulary, a block
  // outside the pool. Each fails alone; then the worker still serves.
  for (int bad = 0; bad < 3; ++bad) {
    v1::StepRequest req;
    req.set_step_id(100 + bad);
    if (bad == 0) {
      req.add_running()->set_id(77);
      req.mutable_running(0)->set_num_scheduled(1);
    } else {
      v1::NewSequence* s = req.add_new_sequences();
      s->set_id(50 + bad);
      s->add_tokens(bad == 1 ? 100000 : 5);
      s->set_num_scheduled(1);
      s->add_full_blocks(bad == 2 ? 1 << 30 : 60);
      s->add_sliding_blocks(0);
    }
    ASSERT_TRUE(stream->Write(req));
    v1::StepResult res;
    ASSERT_TRUE(stream->Read(&res));
    EXPECT_NE(res.error(), "") << "bad step " << bad;
    EXPECT_EQ(res.samples_size(), 0);
  }
  v1::StepRequest more;
  more.set_step_id(200);
  more.add_finished_ids(2);
  v1::RunningSequence* s = more.add_running();
  s->set_id(1);
  s->set_num_scheduled(1);
  const auto tab1 = blocks_for(0, c1 + 1);
  for (size_t b = blocks1; b < tab1.size(); ++b) s->add_new_full_blocks(tab1[b]), s->add_new_sliding_blocks(tab1[b]);
  ASSERT_TRUE(stream->Write(more));
  v1::StepResult res;
  ASSERT_TRUE(stream->Read(&res));
  EXPECT_EQ(res.error(), "");
  EXPECT_EQ(res.samples_size(), 1);

  // Token masks (structured output) in each form, inline in the step and in
  // a follow-up request after it (masks_follow, what the router sends): the
  // sample is always an allowed token (sampling at temperature 1, 12 draws per
  // form and way); malformed masks and follow-ups fail their step, and the
  // stream stays in step.
  uint64_t step_id = 300;
  auto masked_step = [&](const v1::TokenMask& mask, int64_t id, bool follow,
                         std::function<void(v1::StepRequest*)> spoil = nullptr) {
    v1::StepRequest req;
    req.set_step_id(step_id++);
    req.add_finished_ids(id - 1);
    v1::NewSequence* n = req.add_new_sequences();
    n->set_id(id);
    n->add_tokens(5), n->add_tokens(6);
    n->set_num_scheduled(2);
    n->add_full_blocks(60);
    n->add_sliding_blocks(0);
    n->mutable_sampling()->set_temperature(1.0f);
    n->mutable_sampling()->set_top_p(1.0f);
    n->mutable_sampling()->set_has_seed(true);
    n->mutable_sampling()->set_seed(id);
    if (!follow) *n->mutable_token_mask() = mask;
    req.set_masks_follow(follow);
    EXPECT_TRUE(stream->Write(req));
    if (follow) {
      v1::StepRequest more;
      more.set_step_id(req.step_id());
      v1::SequenceMask* sm = more.add_masks();
      sm->set_id(id);
      *sm->mutable_mask() = mask;
      if (spoil) spoil(&more);
      EXPECT_TRUE(stream->Write(more));
    }
    v1::StepResult r;
    EXPECT_TRUE(stream->Read(&r));
    EXPECT_EQ(r.step_id(), req.step_id());
    return r;
  };
  int64_t id = 1000;
  v1::TokenMask allowed, denied, bits;
  for (int32_t t : {3, 200, 511}) allowed.add_allowed(t);
  for (int32_t t = 0; t < 512; ++t) {
    if (t != 42 && t != 43) denied.add_denied(t);
  }
  std::string b(64, '\0');
  b[100 / 8] |= 1 << (100 % 8);
  b[301 / 8] |= 1 << (301 % 8);
  bits.set_bits(b);
  for (int k = 0; k < 24; ++k) {
    const bool follow = k % 2 == 1;
    v1::StepResult r = masked_step(allowed, ++id, follow);
    ASSERT_EQ(r.error(), "");
    ASSERT_EQ(r.samples_size(), 1);
    EXPECT_TRUE(r.samples(0).token() == 3 || r.samples(0).token() == 200 || r.samples(0).token() == 511);
    r = masked_step(denied, ++id, follow);
    ASSERT_EQ(r.samples_size(), 1);
    EXPECT_TRUE(r.samples(0).token() == 42 || r.samples(0).token() == 43) << r.samples(0).token();
    r = masked_step(bits, ++id, follow);
    ASSERT_EQ(r.samples_size(), 1);
    EXPECT_TRUE(r.samples(0).token() == 100 || r.samples(0).token() == 301) << r.samples(0).token();
  }
  v1::TokenMask two = allowed, outside, short_bits, nothing;
  two.add_denied(1);
  outside.add_allowed(512);
  short_bits.set_bits(std::string(63, '\xff'));
  nothing.set_bits(std::string(64, '\0'));
  for (const bool follow : {false, true}) {
    for (const v1::TokenMask& m : {two, outside, short_bits, nothing, v1::TokenMask()}) {
      v1::StepResult r = masked_step(m, ++id, follow);
      EXPECT_NE(r.error(), "") << m.ShortDebugString();
      EXPECT_EQ(r.samples_size(), 0);
    }
  }
  // Follow-ups that do not fit their step.
  const std::vector<std::function<void(v1::StepRequest*)>> spoils = {
      [](v1::StepRequest* m) { m->set_step_id(m->step_id() + 1); },
      [](v1::StepRequest* m) { m->mutable_masks(0)->set_id(77); },
      [](v1::StepRequest* m) { *m->add_masks() = m->masks(0); },
      [](v1::StepRequest* m) { m->add_finished_ids(3); },
  };
  for (const auto& spoil : spoils) {
    v1::StepResult r = masked_step(allowed, ++id, true, spoil);
    EXPECT_NE(r.error(), "");
    EXPECT_EQ(r.samples_size(), 0);
  }
  // A step that fails before its forward still takes its follow-up: the next step is served.
  v1::StepResult r = masked_step(allowed, ++id, true, nullptr);
  ASSERT_EQ(r.error(), "");
  {
    v1::StepRequest bad;
    bad.set_step_id(step_id++);
    v1::RunningSequence* unknown = bad.add_running();
    unknown->set_id(424242);
    unknown->set_num_scheduled(1);
    bad.set_masks_follow(true);
    ASSERT_TRUE(stream->Write(bad));
    v1::StepRequest more;
    more.set_step_id(bad.step_id());
    ASSERT_TRUE(stream->Write(more));
    v1::StepResult br;
    ASSERT_TRUE(stream->Read(&br));
    EXPECT_NE(br.error(), "");
  }
  r = masked_step(bits, ++id, true);
  ASSERT_EQ(r.error(), "");
  ASSERT_EQ(r.samples_size(), 1);
  EXPECT_TRUE(r.samples(0).token() == 100 || r.samples(0).token() == 301);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// Prompt logprobs: a 20-token prompt in chunks of 12 and 8 returns the
// logprob of tokens 1..19, each the log-softmax (computed here, in double) of
// the row before it from the same forward on the engine in this process, with
// the top 3 in order; a chunk of more than 128 prompt rows is refused. Both
// sides keep K/V in f32: chunks of 12 and 8 split the experts' tokens
// differently from one forward of 20 (GEMV or panel kernels, which sum in
// different orders), and a last-bit difference can move a bf16 K/V value by
// a whole bf16 step, past this test's 1e-4.
TEST(WorkerGrpcTest, PromptLogprobsOfEveryPromptToken) {
  const std::string dir = testing::TinyCheckpoint("worker_plp", "mxfp4", "bf16", 1.0);
  testing::WorkerProcess proc(
      dir, {"--kv-cache-memory", "16MiB", "--block-size", "4", "--max-num-seqs", "4", "--kv-cache-dtype", "f32"});
  ASSERT_FALSE(proc.address().empty()) << "worker did not start";
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(proc.address(), grpc::InsecureChannelCredentials()));
  const std::vector<int32_t> prompt = testing::RandomTokens(20, 500, 7);
  std::vector<int32_t> blocks(5);
  std::iota(blocks.begin(), blocks.end(), 0);

  // Reference rows: the whole prompt in one forward with every row's logits.
  std::vector<std::vector<double>> want_lp(20);  // [position] -> log-softmax over the vocabulary
  {
    std::unique_ptr<CpuBackend> engine = ReferenceEngine(dir, KvDtype::kF32);
    CpuBackend& m = *engine;
    SequenceInput in;
    in.tokens = prompt;
    in.block_tables[0] = blocks;
    in.block_tables[1] = blocks;
    in.all_logits = true;
    ForwardOutput out;
    ASSERT_TRUE(m.Forward(std::vector<SequenceInput>{in}, &out).ok());
    for (int p = 0; p + 1 < 20; ++p) {
      const float* row = out.Row(0, p);
      double mx = -1e300, sum = 0;
      for (int64_t t = 0; t < out.vocab_size; ++t) mx = std::max<double>(mx, row[t]);
      for (int64_t t = 0; t < out.vocab_size; ++t) sum += std::exp(row[t] - mx);
      for (int64_t t = 0; t < out.vocab_size; ++t) want_lp[p + 1].push_back(row[t] - mx - std::log(sum));
    }
  }

  grpc::ClientContext ctx;
  auto stream = stub->Execute(&ctx);
  v1::StepRequest first;
  first.set_step_id(1);
  v1::NewSequence* n = first.add_new_sequences();
  n->set_id(1);
  for (int32_t t : prompt) n->add_tokens(t);
  n->set_num_prompt_tokens(20);
  n->set_num_scheduled(12);
  for (int b = 0; b < 3; ++b) n->add_full_blocks(b), n->add_sliding_blocks(b);
  n->mutable_sampling()->set_prompt_logprobs(true);
  n->mutable_sampling()->set_logprobs(true);
  n->mutable_sampling()->set_top_logprobs(3);
  v1::StepResult r1, r2;
  ASSERT_TRUE(stream->Write(first));
  ASSERT_TRUE(stream->Read(&r1));
  ASSERT_EQ(r1.error(), "");
  EXPECT_EQ(r1.samples_size(), 0);
  v1::StepRequest second;
  second.set_step_id(2);
  v1::RunningSequence* run = second.add_running();
  run->set_id(1);
  run->set_num_scheduled(8);
  for (int b = 3; b < 5; ++b) run->add_new_full_blocks(b), run->add_new_sliding_blocks(b);
  ASSERT_TRUE(stream->Write(second));
  ASSERT_TRUE(stream->Read(&r2));
  ASSERT_EQ(r2.error(), "");
  EXPECT_EQ(r2.samples_size(), 1);
  // Step 1 covers positions 0..11 (tokens 1..12), step 2 positions 12..19 (tokens 13..19; 19 predicts the output).
  ASSERT_EQ(r1.prompt_logprobs_size(), 1);
  ASSERT_EQ(r2.prompt_logprobs_size(), 1);
  EXPECT_EQ(r1.prompt_logprobs(0).first_position(), 1);
  EXPECT_EQ(r1.prompt_logprobs(0).tokens_size(), 12);
  EXPECT_EQ(r2.prompt_logprobs(0).first_position(), 13);
  EXPECT_EQ(r2.prompt_logprobs(0).tokens_size(), 7);
  for (const v1::StepResult* r : {&r1, &r2}) {
    const v1::PromptLogprobs& pl = r->prompt_logprobs(0);
    EXPECT_EQ(pl.id(), 1);
    for (int k = 0; k < pl.tokens_size(); ++k) {
      const int64_t pos = pl.first_position() + k;
      const v1::SampleOutput& o = pl.tokens(k);
      EXPECT_EQ(o.token(), prompt[pos]);
      EXPECT_NEAR(o.logprob(), want_lp[pos][prompt[pos]], 1e-4) << pos;
      ASSERT_EQ(o.top_logprobs_size(), 3);
      std::vector<int32_t> order(want_lp[pos].size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return want_lp[pos][a] > want_lp[pos][b]; });
      for (int t = 0; t < 3; ++t) {
        EXPECT_EQ(o.top_logprobs(t).token(), order[t]) << pos;
        EXPECT_NEAR(o.top_logprobs(t).logprob(), want_lp[pos][order[t]], 1e-4);
      }
    }
  }
  // A prompt chunk of 129 rows: refused, and the worker goes on.
  v1::StepRequest big;
  big.set_step_id(3);
  big.add_finished_ids(1);
  v1::NewSequence* b = big.add_new_sequences();
  b->set_id(2);
  for (int32_t t : testing::RandomTokens(129, 500, 8)) b->add_tokens(t);
  b->set_num_prompt_tokens(129);
  b->set_num_scheduled(129);
  for (int k = 0; k < 33; ++k) b->add_full_blocks(k), b->add_sliding_blocks(k % 16);
  b->mutable_sampling()->set_prompt_logprobs(true);
  v1::StepResult r3;
  ASSERT_TRUE(stream->Write(big));
  ASSERT_TRUE(stream->Read(&r3));
  EXPECT_NE(r3.error().find("at most 128"), std::string::npos) << r3.error();
  // A token outside the vocabulary after the first chunk (which prompt
  // logprobs would read): refused when the sequence arrives (a fuzz finding).
  v1::StepRequest late;
  late.set_step_id(4);
  v1::NewSequence* l = late.add_new_sequences();
  l->set_id(3);
  for (int32_t t : {5, 6, 7, 99999}) l->add_tokens(t);
  l->set_num_prompt_tokens(4);
  l->set_num_scheduled(2);
  l->add_full_blocks(0), l->add_sliding_blocks(0);
  l->mutable_sampling()->set_prompt_logprobs(true);
  v1::StepResult r4;
  ASSERT_TRUE(stream->Write(late));
  ASSERT_TRUE(stream->Read(&r4));
  EXPECT_NE(r4.error().find("outside the vocabulary"), std::string::npos) << r4.error();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

// One router at a time: a second Execute stream is refused while one is
// open; when the first ends its sequences are dropped, and a new stream
// is served from scratch.
TEST(WorkerGrpcTest, OneRouterAtATime) {
  const std::string dir = testing::TinyCheckpoint("worker", "mxfp4", "bf16", 1.0);
  testing::WorkerProcess proc(dir, {"--kv-cache-memory", "16MiB", "--block-size", "4"});
  ASSERT_FALSE(proc.address().empty()) << "worker did not start";
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(proc.address(), grpc::InsecureChannelCredentials()));
  auto start_sequence = [](int64_t id) {
    v1::StepRequest req;
    v1::NewSequence* s = req.add_new_sequences();
    s->set_id(id);
    for (int32_t t : {1, 2, 3}) s->add_tokens(t);
    s->set_num_scheduled(3);
    s->set_num_prompt_tokens(3);
    s->add_full_blocks(0);
    s->add_sliding_blocks(0);
    return req;
  };
  auto continue_sequence = [](int64_t id) {
    v1::StepRequest req;
    req.add_running()->set_id(id);
    req.mutable_running(0)->set_num_scheduled(1);
    return req;
  };
  v1::StepResult res;
  grpc::ClientContext ctx1;
  auto first = stub->Execute(&ctx1);
  ASSERT_TRUE(first->Write(start_sequence(1)));
  ASSERT_TRUE(first->Read(&res));
  ASSERT_EQ(res.error(), "");

  grpc::ClientContext ctx2;
  auto second = stub->Execute(&ctx2);
  second->Write(start_sequence(2));
  EXPECT_FALSE(second->Read(&res));
  EXPECT_EQ(second->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  ASSERT_TRUE(first->Write(continue_sequence(1)));
  ASSERT_TRUE(first->Read(&res));
  EXPECT_EQ(res.error(), "") << "the first router is undisturbed";
  first->WritesDone();
  EXPECT_TRUE(first->Finish().ok());

  grpc::ClientContext ctx3;
  auto third = stub->Execute(&ctx3);
  ASSERT_TRUE(third->Write(continue_sequence(1)));
  ASSERT_TRUE(third->Read(&res));
  EXPECT_NE(res.error(), "") << "sequence 1 ended with its router";
  ASSERT_TRUE(third->Write(start_sequence(1)));
  ASSERT_TRUE(third->Read(&res));
  EXPECT_EQ(res.error(), "");
  EXPECT_EQ(res.samples_size(), 1);
  third->WritesDone();
  EXPECT_TRUE(third->Finish().ok());
}

// A rank of a tensor-parallel group as a real process: it says what it is,
// refuses to step before the group has met, refuses an Init for another rank,
// fails an Init whose peer never comes with an error naming it, and only rank 0
// holds the rendezvous store.
TEST(WorkerGrpcTest, RankOfAGroupBeforeAndAtItsRendezvous) {
  const std::string dir = testing::TinyCheckpoint("worker_rank", "mxfp4", "bf16", 1.0);
  testing::WorkerProcess r0(dir, {"--kv-cache-memory", "16MiB", "--block-size", "4", "--max-num-seqs", "4",
                                  "--tensor-parallel-size", "2", "--rank", "0"});
  testing::WorkerProcess r1(dir, {"--kv-cache-memory", "16MiB", "--block-size", "4", "--max-num-seqs", "4",
                                  "--tensor-parallel-size", "2", "--rank", "1"});
  ASSERT_FALSE(r0.address().empty());
  ASSERT_FALSE(r1.address().empty());
  auto s0 = v1::Worker::NewStub(grpc::CreateChannel(r0.address(), grpc::InsecureChannelCredentials()));
  auto s1 = v1::Worker::NewStub(grpc::CreateChannel(r1.address(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    v1::DescribeResponse d;
    ASSERT_TRUE(s1->Describe(&ctx, v1::DescribeRequest(), &d).ok());
    EXPECT_EQ(d.rank(), 1);
    EXPECT_EQ(d.world_size(), 2);
    EXPECT_EQ(d.communicator(), "gloo");
  }
  {  // Init for the wrong rank.
    grpc::ClientContext ctx;
    v1::InitRequest req;
    req.set_rank(0);
    req.set_world_size(2);
    req.set_store_address(r0.address());
    req.set_store_prefix("wrong");
    v1::InitResponse res;
    const grpc::Status st = s1->Init(&ctx, req, &res);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("started as rank 1 of 2"), std::string::npos) << st.error_message();
  }
  {  // The store is rank 0's.
    grpc::ClientContext ctx;
    v1::StoreGetRequest req;
    req.set_key("x");
    v1::StoreGetResponse res;
    EXPECT_EQ(s1->StoreGet(&ctx, req, &res).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // One step on a fresh Execute stream of rank 0: a new 3-token sequence `id`, `twice` also as running.
  auto step = [&](int64_t id, bool twice) {
    grpc::ClientContext ctx;
    auto stream = s0->Execute(&ctx);
    v1::StepRequest req;
    req.set_step_id(1);
    v1::NewSequence* n = req.add_new_sequences();
    n->set_id(id);
    for (int32_t t : {1, 2, 3}) n->add_tokens(t);
    n->set_num_scheduled(3);
    n->add_full_blocks(0);
    n->add_sliding_blocks(0);
    if (twice) req.add_running()->set_id(id);
    v1::StepResult res;
    EXPECT_TRUE(stream->Write(req) && stream->Read(&res));
    stream->WritesDone();
    stream->Finish();
    return res.error();
  };
  // Found by fuzz_worker_step: a sequence named twice in one step (new and running) is refused.
  EXPECT_NE(step(7, true).find("appears twice"), std::string::npos);
  // A step before the group has met: an error naming the cause; the worker keeps serving.
  EXPECT_NE(step(1, false).find("has not met"), std::string::npos);
  {  // Rank 0 alone: its peer never calls Init, so the join fails in time, naming the rank.
    grpc::ClientContext ctx;
    v1::InitRequest req;
    req.set_rank(0);
    req.set_world_size(2);
    req.set_store_address(r0.address());
    req.set_store_prefix("alone");
    req.set_timeout_ms(1000);
    v1::InitResponse res;
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status st = s0->Init(&ctx, req, &res);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(st.error_message().find("rank 1 did not join"), std::string::npos) << st.error_message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  }
  {  // Both ranks at once: the group meets.
    std::vector<grpc::Status> results(2);
    std::vector<std::thread> calls;
    for (int r = 0; r < 2; ++r) {
      calls.emplace_back([&, r] {
        grpc::ClientContext ctx;
        v1::InitRequest req;
        req.set_rank(r);
        req.set_world_size(2);
        req.set_store_address(r0.address());
        req.set_store_prefix("together");
        v1::InitResponse res;
        results[r] = (r == 0 ? s0 : s1)->Init(&ctx, req, &res);
      });
    }
    for (auto& t : calls) t.join();
    EXPECT_TRUE(results[0].ok()) << results[0].error_message();
    EXPECT_TRUE(results[1].ok()) << results[1].error_message();
  }
}

}  // namespace
}  // namespace moeserve
