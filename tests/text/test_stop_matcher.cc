#include <gtest/gtest.h>

#include "router/text/stop_matcher.h"

namespace moeserve::text {
namespace {

std::string Feed(std::vector<std::string> stops, const std::vector<std::string>& pieces, bool* stopped = nullptr,
                std::vector<std::string>* emitted = nullptr) {
  StopMatcher m(std::move(stops));
  std::string out;
  for (const auto& p : pieces) {
    const std::string e = m.Push(p);
    if (emitted) emitted->push_back(e);
    out += e;
  }
  out += m.Flush();
  if (stopped) *stopped = m.stopped();
  return out;
}

TEST(StopMatcherTest, CutsAtTheEarliestStopAndNeverLeaksAPrefix) {
  bool stopped;
  std::vector<std::string> emitted;
  EXPECT_EQ(Feed({"END"}, {"hello E", "N", "D world"}, &stopped, &emitted), "hello ");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(emitted[0], "hello ");  // "E" held back
  EXPECT_EQ(emitted[1], "");        // "EN" held back
  EXPECT_EQ(Feed({"\n\n", "###"}, {"a##", "b\n", "\nc"}, &stopped), "a##b");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(Feed({"xyz"}, {"ab", "xy"}, &stopped), "abxy");  // a held prefix is released at the end
  EXPECT_FALSE(stopped);
  EXPECT_EQ(Feed({}, {"a", "b"}), "ab");
  EXPECT_EQ(Feed({"é"}, {"caf", "é!"}, &stopped), "caf");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(Feed({"stop"}, {"stop"}, &stopped), "");
  EXPECT_TRUE(stopped);
}

}  // namespace
}  // namespace moeserve::text
