// The router's group loop against a real worker process: many concurrent
// greedy requests, each equal token for token to the same request run alone;
// aborts free their blocks; a killed worker ends every request with an error.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "router/group_runner.h"
#include "tests/test_util.h"
#include "tests/worker_process.h"

namespace moeserve::router {
namespace {

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int64_t, std::vector<int32_t>> tokens;
  std::map<int64_t, RequestStatus> finished;

  GenerationCallbacks For(int64_t* id_slot) {
    GenerationCallbacks cb;
    cb.on_token = [this, id_slot](const worker::v1::SampleOutput& s) {
      std::lock_guard<std::mutex> l(mu);
      tokens[s.id()].push_back(s.token());
    };
    cb.on_finish = [this, id_slot](RequestStatus st, const std::string&) {
      std::lock_guard<std::mutex> l(mu);
      finished[*id_slot] = st;
      cv.notify_all();
    };
    return cb;
  }
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, std::chrono::seconds(20), [&] { return finished.size() >= n; });
  }
};

GenerationRequest Greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
  GenerationRequest g;
  g.prompt = std::move(prompt);
  g.max_tokens = max_tokens;
  g.sampling.set_temperature(0);
  return g;
}

// A small f32 KV cache: ~100 full-attention blocks of 4 tokens, so 32
// concurrent requests of up to 43 tokens cannot all fit and get preempted.
const std::vector<std::string> kWorkerFlags = {"--kv-cache-memory", "330KiB", "--block-size", "4",
                                               "--max-num-seqs", "16", "--kv-cache-dtype", "f32"};

TEST(GroupRunnerTest, ConcurrentRequestsEqualEachAlone) {
  const std::string dir = testing::TinyCheckpoint("runner", "mxfp4", "bf16", 1.0);
  testing::WorkerProcess worker(dir, kWorkerFlags);
  ASSERT_FALSE(worker.address().empty());
  constexpr int kRequests = 32;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kRequests; ++i) prompts.push_back(testing::RandomTokens(3 + (i * 7) % 29, 500, 100 + i));

  // Alone: one request at a time.
  std::vector<std::vector<int32_t>> alone(kRequests);
  {
    SchedulerConfig c;
    GroupRunner runner(worker.address(), c);
    ASSERT_TRUE(runner.Start().ok());
    for (int i = 0; i < kRequests; ++i) {
      Collector col;
      auto slot = std::make_unique<int64_t>(0);
      absl::StatusOr<int64_t> id;
      {
        // Callbacks take this lock, so they wait until the slot holds the id.
        std::lock_guard<std::mutex> l(col.mu);
        id = runner.Submit(Greedy(prompts[i], 12), col.For(slot.get()));
        ASSERT_TRUE(id.ok());
        *slot = *id;
      }
      ASSERT_TRUE(col.WaitFor(1));
      alone[i] = col.tokens[*id];
      EXPECT_EQ(col.finished[*id], RequestStatus::kFinishedLength);
    }
  }
  // Together: all at once, with a small token budget so prefill is chunked,
  // steps mix prefill and decode, and the small KV pool forces preemptions.
  SchedulerConfig c;
  c.max_num_batched_tokens = 48;
  c.max_num_seqs = 16;
  GroupRunner runner(worker.address(), c);
  ASSERT_TRUE(runner.Start().ok());
  Collector col;
  std::vector<std::unique_ptr<int64_t>> slots;
  std::vector<int64_t> ids;
  {
    std::lock_guard<std::mutex> l(col.mu);  // callbacks wait until every id is known
    for (int i = 0; i < kRequests; ++i) {
      slots.push_back(std::make_unique<int64_t>(0));
      auto id = runner.Submit(Greedy(prompts[i], 12), col.For(slots.back().get()));
      ASSERT_TRUE(id.ok());
      *slots.back() = *id;
      ids.push_back(*id);
    }
  }
  ASSERT_TRUE(col.WaitFor(kRequests));
  EXPECT_GT(runner.num_preemptions(), 0) << "the KV pool never ran out; preemption went untested";
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(col.tokens[ids[i]], alone[i]) << "request " << i;
    EXPECT_EQ(col.finished[ids[i]], RequestStatus::kFinishedLength);
  }
}

TEST(GroupRunnerTest, AbortsAndWorkerDeath) {
  const std::string dir = testing::TinyCheckpoint("runner2", "mxfp4", "bf16", 1.0);
  testing::WorkerProcess worker(dir, kWorkerFlags);
  ASSERT_FALSE(worker.address().empty());
  SchedulerConfig c;
  GroupRunner runner(worker.address(), c);
  ASSERT_TRUE(runner.Start().ok());
  // Too long for max_model_len: rejected at once.
  EXPECT_EQ(runner.Submit(Greedy(std::vector<int32_t>(9000, 1), 10), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(runner.Submit(Greedy({1, 600}, 10), {}).status().code(), absl::StatusCode::kInvalidArgument);
  Collector col;
  auto s1 = std::make_unique<int64_t>(0), s2 = std::make_unique<int64_t>(0);
  {
    std::lock_guard<std::mutex> l(col.mu);
    *s1 = *runner.Submit(Greedy({1, 2, 3}, 300), col.For(s1.get()));
  }
  // Abort the long request once it is generating.
  for (int i = 0; i < 500; ++i) {
    {
      std::lock_guard<std::mutex> l(col.mu);
      if (col.tokens[*s1].size() >= 3) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  runner.Abort(*s1);
  ASSERT_TRUE(col.WaitFor(1));
  EXPECT_EQ(col.finished[*s1], RequestStatus::kFinishedAborted);
  for (int i = 0; i < 200 && runner.num_running() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(runner.num_running(), 0);
  // A request in flight when the worker dies ends with an error.
  {
    std::lock_guard<std::mutex> l(col.mu);
    *s2 = *runner.Submit(Greedy({4, 5, 6}, 300), col.For(s2.get()));
  }
  for (int i = 0; i < 2000; ++i) {  // kill the worker as soon as the request is generating
    {
      std::lock_guard<std::mutex> l(col.mu);
      if (!col.tokens[*s2].empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  worker.Kill();
  ASSERT_TRUE(col.WaitFor(2));
  EXPECT_EQ(col.finished[*s2], RequestStatus::kFinishedError);
}

}  // namespace
}  // namespace moeserve::router
