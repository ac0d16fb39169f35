// Plain-text replies for the simulator: deterministic (same prompt and seed, same reply),
// assembled from sentences that echo the user's last message and the names (products,
// fragrances, brands) found in the prompt. Pure; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tidepool::llm::sim {

struct PromptMessage {
  std::string role;
  std::string content;
};

// A stable hash of the roles and contents (FNV-1a), the seed of the reply.
uint64_t HashMessages(const std::vector<PromptMessage>& messages);

// Names in the prompt: runs of capitalized words not at a sentence start ("Santal 33",
// "Bleu de Chanel"), quoted phrases, in order of first appearance, without duplicates.
std::vector<std::string> FindNames(std::string_view text);

// Exactly `tokens` tokens (≥ 0); a token is a word with its leading space, so concatenating
// them gives the reply. The last one ends a sentence.
std::vector<std::string> GenerateReply(const std::vector<PromptMessage>& messages, int tokens,
                                       uint64_t seed);

// An estimate of the tokens of a text, as the simulator counts them (≈ words).
int CountTokens(std::string_view text);

}  // namespace tidepool::llm::sim
