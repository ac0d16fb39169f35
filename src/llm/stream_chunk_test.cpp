#include "llm/stream_chunk.h"

#include <gtest/gtest.h>

namespace tidepool::llm {
namespace {

StreamChunk Parse(std::string_view data) {
  StreamChunk chunk;
  EXPECT_TRUE(ParseStreamChunk(data, &chunk)) << data;
  return chunk;
}

TEST(StreamChunkTest, ContentDeltaOfAnOpenAiChunk) {
  const StreamChunk chunk = Parse(
      R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",)"
      R"("system_fingerprint":null,"choices":[{"index":0,"delta":{"content":" world"},)"
      R"("logprobs":null,"finish_reason":null}],"usage":null})");
  EXPECT_TRUE(chunk.is_object);
  EXPECT_FALSE(chunk.has_error);
  EXPECT_EQ(chunk.model, "gpt-4o-mini");
  EXPECT_FALSE(chunk.usage.has_value());
  EXPECT_TRUE(chunk.has_choice);
  EXPECT_EQ(chunk.finish_reason, "");
  EXPECT_EQ(chunk.content, " world");
}

TEST(StreamChunkTest, EscapesAreDecoded) {
  const StreamChunk chunk =
      Parse(R"({"choices":[{"delta":{"content":"a\"b\\c\nd\u00e9\ud83d\ude00/"}}]})");
  EXPECT_EQ(chunk.content, "a\"b\\c\nd\xc3\xa9\xf0\x9f\x98\x80/");
}

TEST(StreamChunkTest, FinishReasonAndUsageOnlyChunks) {
  const StreamChunk finish =
      Parse(R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"}]})");
  EXPECT_TRUE(finish.has_choice);
  EXPECT_EQ(finish.finish_reason, "length");
  EXPECT_EQ(finish.content, "");

  const StreamChunk usage = Parse(
      R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":200,"total_tokens":212}})");
  EXPECT_FALSE(usage.has_choice);
  ASSERT_TRUE(usage.usage.has_value());
  EXPECT_EQ(usage.usage->prompt_tokens, 12);
  EXPECT_EQ(usage.usage->completion_tokens, 200);
  EXPECT_EQ(usage.usage->total_tokens, 212);
}

TEST(StreamChunkTest, UsageTotalIsTheSumWhenMissingAndNumbersMayBeDoubles) {
  const StreamChunk chunk =
      Parse(R"({"usage":{"prompt_tokens":3.0,"completion_tokens":4,"extra":{"total_tokens":99}}})");
  ASSERT_TRUE(chunk.usage.has_value());
  EXPECT_EQ(chunk.usage->prompt_tokens, 3);
  EXPECT_EQ(chunk.usage->completion_tokens, 4);
  EXPECT_EQ(chunk.usage->total_tokens, 7);
}

TEST(StreamChunkTest, OnlyTheFirstChoiceAndItsOwnDeltaCount) {
  const StreamChunk chunk =
      Parse(R"({"choices":[{"delta":{"content":"first","tool_calls":[{"content":"no"}]},)"
            R"("extra":{"finish_reason":"no","content":"no"}},)"
            R"({"delta":{"content":"second"},"finish_reason":"stop"}],)"
            R"("content":"no","finish_reason":"no"})");
  EXPECT_EQ(chunk.content, "first");
  EXPECT_EQ(chunk.finish_reason, "");
}

TEST(StreamChunkTest, ChoicesThatAreNotAnArrayOfObjectsHaveNoChoice) {
  EXPECT_FALSE(Parse(R"({"choices":{"0":{"delta":{"content":"x"}}}})").has_choice);
  EXPECT_FALSE(Parse(R"({"choices":["x",{"delta":{"content":"x"}}]})").has_choice);
  EXPECT_EQ(Parse(R"({"choices":["x",{"delta":{"content":"x"}}]})").content, "");
  EXPECT_FALSE(Parse(R"({"choices":null})").has_choice);
}

TEST(StreamChunkTest, NullAndNonStringFieldsAreAbsent) {
  const StreamChunk chunk =
      Parse(R"({"model":null,"choices":[{"delta":{"content":null},"finish_reason":null}]})");
  EXPECT_EQ(chunk.model, "");
  EXPECT_TRUE(chunk.has_choice);
  EXPECT_EQ(chunk.content, "");
  EXPECT_EQ(chunk.finish_reason, "");
  EXPECT_EQ(Parse(R"({"choices":[{"delta":"text"}]})").content, "");
  EXPECT_EQ(Parse(R"({"choices":[{"delta":{"content":7}}]})").content, "");
}

TEST(StreamChunkTest, ErrorMemberUnlessNull) {
  EXPECT_TRUE(Parse(R"({"error":{"message":"overloaded","type":"server_error"}})").has_error);
  EXPECT_TRUE(Parse(R"({"error":"overloaded"})").has_error);
  EXPECT_TRUE(Parse(R"({"error":[1]})").has_error);
  EXPECT_FALSE(Parse(R"({"error":null,"choices":[]})").has_error);
  // Only the top-level member counts.
  EXPECT_FALSE(Parse(R"({"choices":[{"delta":{"error":"x"}}]})").has_error);
}

TEST(StreamChunkTest, NotAnObjectOrNotJson) {
  EXPECT_FALSE(Parse(R"(["choices"])").is_object);
  EXPECT_FALSE(Parse(R"("text")").is_object);
  StreamChunk chunk;
  EXPECT_FALSE(ParseStreamChunk(R"({"choices":[)", &chunk));
  EXPECT_FALSE(ParseStreamChunk(R"({"a":1} trailing)", &chunk));
  EXPECT_TRUE(ParseStreamChunk("{\"a\":1} \r\n", &chunk));
  EXPECT_FALSE(ParseStreamChunk("", &chunk));
}

TEST(StreamChunkTest, ReusedChunkForgetsThePreviousEvent) {
  StreamChunk chunk;
  ASSERT_TRUE(ParseStreamChunk(
      R"({"model":"m","choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],)"
      R"("usage":{"prompt_tokens":1},"error":1})",
      &chunk));
  ASSERT_TRUE(ParseStreamChunk(R"({"choices":[]})", &chunk));
  EXPECT_FALSE(chunk.has_error);
  EXPECT_EQ(chunk.model, "");
  EXPECT_FALSE(chunk.usage.has_value());
  EXPECT_FALSE(chunk.has_choice);
  EXPECT_EQ(chunk.content, "");
  EXPECT_EQ(chunk.finish_reason, "");
}

TEST(StreamChunkTest, DeepNestingBeyondTheParsersLimitIsRefused) {
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "{\"a\":";
  deep += "1";
  for (int i = 0; i < 100; ++i) deep += "}";
  StreamChunk chunk;
  EXPECT_FALSE(ParseStreamChunk(deep, &chunk));
}

}  // namespace
}  // namespace tidepool::llm
