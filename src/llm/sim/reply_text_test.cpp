#include "llm/sim/reply_text.h"

#include <gtest/gtest.h>

namespace tidepool::llm::sim {
namespace {

std::string Join(const std::vector<std::string>& tokens) {
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

const std::vector<PromptMessage> kPrompt = {
    {.role = "system",
     .content = "You are a fragrance advisor. Catalog: Santal 33 by Le Labo, "
                "Bleu de Chanel, \"Wood Sage & Sea Salt\"."},
    {.role = "user", .content = "Which woody fragrance would suit the office?"}};

TEST(ReplyTextTest, ExactLengthDeterministicAndEndsASentence) {
  for (int n : {1, 7, 40, 200}) {
    const std::vector<std::string> reply = GenerateReply(kPrompt, n, 42);
    ASSERT_EQ(reply.size(), static_cast<size_t>(n));
    EXPECT_EQ(reply, GenerateReply(kPrompt, n, 42));
    EXPECT_EQ(CountTokens(Join(reply)), n);
    EXPECT_EQ(Join(reply).back(), '.');
  }
  EXPECT_TRUE(GenerateReply(kPrompt, 0, 1).empty());
}

TEST(ReplyTextTest, EchoesTopicAndNamesFromThePrompt) {
  const std::string reply = Join(GenerateReply(kPrompt, 80, 7));
  EXPECT_NE(reply.find("woody"), std::string::npos) << reply;
  EXPECT_NE(reply.find("Santal 33"), std::string::npos) << reply;
}

TEST(ReplyTextTest, FindNamesSkipsSentenceStarts) {
  const std::vector<std::string> names =
      FindNames("I like Santal 33. The office is cold. Try Bleu de Chanel, or \"Oud Wood\".");
  EXPECT_EQ(names, (std::vector<std::string>{"Oud Wood", "Santal 33", "Bleu de Chanel"}));
}

TEST(ReplyTextTest, HashDependsOnRolesAndContents) {
  EXPECT_NE(HashMessages({{.role = "user", .content = "ab"}}),
            HashMessages({{.role = "user", .content = "a"}, {.role = "user", .content = "b"}}));
  EXPECT_EQ(HashMessages(kPrompt), HashMessages(kPrompt));
}

}  // namespace
}  // namespace tidepool::llm::sim
