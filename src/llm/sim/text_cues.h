// Word-level reading of user text for the simulator: lower-cased words, clauses, negation scope
// and phrase matching. Shared by schema filling and reply generation. Pure; thread-safe.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tidepool::llm::sim {

struct Word {
  std::string text;      // lower-cased; "$" stands for any currency sign
  bool negated = false;  // inside the scope of "avoid", "no", "not", "hate", ...
  int clause = 0;        // index of the clause (split at . ; ! ?)
};

// Splits `text` into words: letters, digits and apostrophes; hyphens separate words; digits keep
// their inner '.' and ',' ("1,000", "9.5"); currency signs ($ € £) become the word "$".
std::vector<Word> ReadWords(std::string_view text);

// The words of a phrase as ReadWords would split them ("eau_de_parfum" → eau, de, parfum).
std::vector<std::string> PhraseWords(std::string_view phrase);

// Positions in `words` where `phrase` starts (whole words; the phrase's last word may appear
// with or without a plural "s"/"es").
std::vector<size_t> FindPhrase(const std::vector<Word>& words,
                               const std::vector<std::string>& phrase);

// The number a word spells ("120", "1,000", "9.5"), if it is one.
std::optional<double> WordNumber(std::string_view word);

}  // namespace tidepool::llm::sim
