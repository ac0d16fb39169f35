#include "llm/sse_parser.h"

#include <gtest/gtest.h>

namespace tidepool::llm {
namespace {

std::vector<SseEvent> FeedAll(SseParser& parser, const std::vector<std::string>& chunks) {
  std::vector<SseEvent> events;
  for (const auto& chunk : chunks) EXPECT_TRUE(parser.Feed(chunk, &events).ok());
  return events;
}

TEST(SseParserTest, DataLinesDispatchOnBlankLine) {
  SseParser parser;
  auto events = FeedAll(parser, {"data: {\"a\":1}\n\ndata: [DONE]\n\n"});
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, "{\"a\":1}");
  EXPECT_EQ(events[1].data, "[DONE]");
}

TEST(SseParserTest, EventSplitAcrossEveryByte) {
  const std::string stream = "event: delta\nid: 7\ndata: hello\n\ndata: world\n\n";
  SseParser parser;
  std::vector<std::string> chunks;
  for (char c : stream) chunks.emplace_back(1, c);
  auto events = FeedAll(parser, chunks);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].event, "delta");
  EXPECT_EQ(events[0].id, "7");
  EXPECT_EQ(events[0].data, "hello");
  EXPECT_EQ(events[1].event, "");
  EXPECT_EQ(events[1].data, "world");
}

TEST(SseParserTest, CrlfSplitBetweenChunksIsOneLineEnd) {
  SseParser parser;
  auto events = FeedAll(parser, {"data: a\r", "\n\r", "\ndata: b\r\n\r\n"});
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, "a");
  EXPECT_EQ(events[1].data, "b");
}

TEST(SseParserTest, LoneCarriageReturnsEndLines) {
  SseParser parser;
  auto events = FeedAll(parser, {"data: x\r\rdata: y\r\r"});
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].data, "x");
  EXPECT_EQ(events[1].data, "y");
}

TEST(SseParserTest, CommentsAndHeartbeatsAreIgnored) {
  SseParser parser;
  auto events = FeedAll(parser, {": keep-alive\n\n", ":\n", "data: z\n", ": mid-event\n", "\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "z");
}

TEST(SseParserTest, MultiLineDataIsJoinedWithNewlines) {
  SseParser parser;
  auto events = FeedAll(parser, {"data: {\n", "data:  \"k\": 1\ndata:}\n\n"});
  ASSERT_EQ(events.size(), 1u);
  // Only one space after the colon is stripped.
  EXPECT_EQ(events[0].data, "{\n \"k\": 1\n}");
}

TEST(SseParserTest, FieldWithoutColonAndUnknownFields) {
  SseParser parser;
  auto events = FeedAll(parser, {"retry: 3000\nfoo: bar\ndata\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "");
}

TEST(SseParserTest, IncompleteEventIsHeldBack) {
  SseParser parser;
  auto events = FeedAll(parser, {"data: partial\n"});
  EXPECT_TRUE(events.empty());
  events = FeedAll(parser, {"\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "partial");
}

TEST(SseParserTest, OverlongLineIsAnError) {
  constexpr size_t kLimit = 16;
  SseParser parser(kLimit);
  std::vector<SseEvent> events;
  EXPECT_TRUE(parser.Feed("data: 0123456", &events).ok());
  EXPECT_EQ(parser.Feed("789abcdef", &events).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tidepool::llm
