// NCCL on one GPU (label gpu; skipped without a device): the collectives of a
// world-size-1 group on device memory, and a group whose other rank never
// comes failing its join after the timeout instead of hanging. (A single GPU
// cannot host two NCCL ranks of one group; multi-rank groups are proven with
// the Gloo implementation, which shares everything with this one but the calls.)
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <vector>

#include "engine/cuda/device.h"
#include "engine/dtype.h"
#include "engine/parallel/nccl_communicator.h"

namespace moeserve::parallel {
namespace {

TEST(Nccl, WorldOfOneOnDeviceMemory) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto id = NcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto comm = CreateNcclCommunicator(0, 1, *id, stream, std::chrono::seconds(30));
  ASSERT_TRUE(comm.ok()) << comm.status();
  Communicator& c = **comm;
  EXPECT_EQ(c.name(), "nccl");
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64 * 4), cudaSuccess);
  std::vector<float> h = {1.5f, -2.0f, 3.25f};
  ASSERT_EQ(cudaMemcpy(d, h.data(), 12, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(c.AllReduceSum(d, 3, DataType::kF32).ok());
  ASSERT_TRUE(c.AllGather(d, d + 16, 3, DataType::kF32).ok());
  ASSERT_TRUE(c.Broadcast(d + 16, 3, DataType::kF32, 0).ok());
  std::vector<float> back(3);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(back.data(), d + 16, 12, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, h);
  uint16_t bf[2] = {F32ToBf16(0.5f), F32ToBf16(4.0f)};
  ASSERT_EQ(cudaMemcpy(d, bf, 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(c.AllReduceSum(d, 2, DataType::kBF16).ok());
  int32_t tokens[3] = {7, 8, 9};
  ASSERT_TRUE(c.BroadcastHost(tokens, 3, DataType::kI32, 0).ok());
  EXPECT_EQ(tokens[2], 9);
  ASSERT_TRUE(c.Barrier().ok());
  EXPECT_GE(c.num_calls(), 5);
  cudaFree(d);
  comm->reset();
  cudaStreamDestroy(stream);
}

TEST(Nccl, AnAbsentRankFailsTheJoinInTime) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto id = NcclUniqueId();
  ASSERT_TRUE(id.ok());
  const auto t0 = std::chrono::steady_clock::now();
  auto comm = CreateNcclCommunicator(0, 2, *id, stream, std::chrono::seconds(3));
  EXPECT_FALSE(comm.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  EXPECT_NE(comm.status().message().find("did not join"), std::string::npos) << comm.status();
  cudaStreamDestroy(stream);
}

TEST(Nccl, BadUniqueIdIsAClearError) {
  auto comm = CreateNcclCommunicator(0, 2, "short", nullptr, std::chrono::seconds(1));
  ASSERT_FALSE(comm.ok());
  EXPECT_NE(comm.status().message().find("unique id"), std::string::npos);
}

}  // namespace
}  // namespace moeserve::parallel
