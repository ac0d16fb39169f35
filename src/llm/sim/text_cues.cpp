#include "llm/sim/text_cues.h"

#include <array>
#include <cctype>
#include <cstdlib>

namespace tidepool::llm::sim {
namespace {

// Words that open a negation scope: what follows, up to the end of the clause or a contrast
// word, is something the user does not want.
constexpr std::array<std::string_view, 20> kNegationCues = {
    "avoid",    "avoiding", "no",    "not",    "hate", "hates",   "dislike",
    "dislikes", "without",  "never", "don't",  "dont", "doesn't", "nothing",
    "allergic", "except",   "can't", "cannot", "nor",  "none"};
// Words that close a negation scope ("no oud but I love rose").
constexpr std::array<std::string_view, 13> kContrastWords = {
    "but",     "however", "though", "although", "yet",   "instead", "while",
    "whereas", "prefer",  "love",   "want",     "enjoy", "adore"};
// Words after a negation cue that make it a hedge, not a dislike ("not sure, maybe woody").
constexpr std::array<std::string_view, 5> kHedgeWords = {"sure", "idea", "matter", "certain",
                                                         "preference"};

template <size_t N>
bool OneOf(std::string_view word, const std::array<std::string_view, N>& list) {
  for (std::string_view w : list) {
    if (w == word) return true;
  }
  return false;
}

bool IsWordChar(unsigned char c) {
  return std::isalnum(c) || c == '\'' || c >= 0x80;
}

bool IsClauseEnd(char c) {
  return c == '.' || c == ';' || c == '!' || c == '?' || c == '\n';
}

// Lower-cased words and clause indexes, before negation is marked.
std::vector<Word> SplitWords(std::string_view text) {
  constexpr std::string_view kEuro = "\xE2\x82\xAC";
  constexpr std::string_view kPound = "\xC2\xA3";
  std::vector<Word> words;
  std::string current;
  int clause = 0;
  auto flush = [&] {
    // Quotes around a word ('rose') are not part of it.
    while (!current.empty() && current.back() == '\'') current.pop_back();
    size_t start = 0;
    while (start < current.size() && current[start] == '\'') ++start;
    if (start < current.size()) words.push_back({.text = current.substr(start), .clause = clause});
    current.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (text.substr(i, kEuro.size()) == kEuro || text.substr(i, kPound.size()) == kPound ||
        c == '$') {
      flush();
      words.push_back({.text = "$", .clause = clause});
      i +=
          c == '$' ? 0 : (text.substr(i, kEuro.size()) == kEuro ? kEuro.size() : kPound.size()) - 1;
      continue;
    }
    const bool inner_number_mark = (c == '.' || c == ',') && !current.empty() &&
                                   std::isdigit(static_cast<unsigned char>(current.back())) &&
                                   i + 1 < text.size() &&
                                   std::isdigit(static_cast<unsigned char>(text[i + 1]));
    if (IsWordChar(c) || inner_number_mark) {
      current += static_cast<char>(std::tolower(c));
      continue;
    }
    flush();
    if (IsClauseEnd(static_cast<char>(c))) ++clause;
  }
  flush();
  return words;
}

bool WordMatches(std::string_view text_word, std::string_view phrase_word, bool last) {
  if (text_word == phrase_word) return true;
  if (!last) return false;
  auto plural_of = [](std::string_view plural, std::string_view singular) {
    if (plural.size() == singular.size() + 1 && plural.back() == 's') {
      return plural.substr(0, singular.size()) == singular;
    }
    if (plural.size() == singular.size() + 2 && plural.substr(plural.size() - 2) == "es") {
      return plural.substr(0, singular.size()) == singular;
    }
    return false;
  };
  return plural_of(text_word, phrase_word) || plural_of(phrase_word, text_word);
}

}  // namespace

std::vector<Word> ReadWords(std::string_view text) {
  std::vector<Word> words = SplitWords(text);
  bool in_scope = false;
  int scope_clause = -1;
  for (size_t i = 0; i < words.size(); ++i) {
    Word& w = words[i];
    if (in_scope && w.clause != scope_clause) in_scope = false;
    const bool after_cue = i > 0 && OneOf(words[i - 1].text, kNegationCues);
    if (in_scope && OneOf(w.text, kContrastWords) && !after_cue) in_scope = false;
    if (OneOf(w.text, kNegationCues)) {
      const bool hedge = i + 1 < words.size() && OneOf(words[i + 1].text, kHedgeWords);
      in_scope = !hedge;
      scope_clause = w.clause;
      continue;  // the cue itself is not something disliked
    }
    w.negated = in_scope;
  }
  return words;
}

std::vector<std::string> PhraseWords(std::string_view phrase) {
  std::string spaced(phrase);
  for (char& c : spaced) {
    if (c == '_') c = ' ';
  }
  std::vector<std::string> out;
  for (Word& w : SplitWords(spaced)) out.push_back(std::move(w.text));
  return out;
}

std::vector<size_t> FindPhrase(const std::vector<Word>& words,
                               const std::vector<std::string>& phrase) {
  std::vector<size_t> hits;
  if (phrase.empty() || phrase.size() > words.size()) return hits;
  for (size_t i = 0; i + phrase.size() <= words.size(); ++i) {
    bool match = true;
    for (size_t k = 0; k < phrase.size() && match; ++k) {
      match = WordMatches(words[i + k].text, phrase[k], k + 1 == phrase.size());
    }
    if (match) hits.push_back(i);
  }
  return hits;
}

std::optional<double> WordNumber(std::string_view word) {
  if (word.empty() || !std::isdigit(static_cast<unsigned char>(word.front()))) return std::nullopt;
  std::string digits;
  for (char c : word) {
    if (c == ',') continue;  // thousands separator
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.') return std::nullopt;
    digits += c;
  }
  char* end = nullptr;
  const double value = std::strtod(digits.c_str(), &end);
  if (end == nullptr || *end != '\0') return std::nullopt;
  return value;
}

}  // namespace tidepool::llm::sim
