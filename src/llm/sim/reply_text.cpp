#include "llm/sim/reply_text.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <random>
#include <set>

#include "llm/sim/text_cues.h"

namespace tidepool::llm::sim {
namespace {

constexpr uint64_t kFnvOffset = 14695981039346656037ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;
constexpr size_t kMaxNames = 6;
constexpr size_t kMaxKeywords = 3;
constexpr size_t kMaxQuotedWords = 5;
constexpr size_t kMinKeywordLength = 4;

// Words that say nothing about the topic of a message.
const std::set<std::string, std::less<>>& StopWords() {
  static const auto* words = new std::set<std::string, std::less<>>{
      "about",     "above",  "after",   "again",   "also",      "always",    "another", "any",
      "anything",  "around", "because", "been",    "before",    "being",     "below",   "best",
      "both",      "could",  "does",    "doing",   "down",      "each",      "even",    "every",
      "from",      "give",   "good",    "have",    "having",    "help",      "here",    "into",
      "just",      "know",   "like",    "looking", "made",      "make",      "many",    "maybe",
      "might",     "more",   "most",    "much",    "must",      "need",      "needs",   "never",
      "only",      "other",  "over",    "please",  "really",    "recommend", "should",  "some",
      "something", "such",   "suggest", "than",    "that",      "their",     "them",    "then",
      "there",     "these",  "they",    "thing",   "things",    "this",      "those",   "through",
      "under",     "very",   "want",    "wants",   "what",      "when",      "where",   "which",
      "while",     "will",   "with",    "without", "would",     "your",      "yours",   "thanks",
      "thank",     "hello",  "tell",    "find",    "something", "dont",      "don't",   "i'm",
      "it's",      "can't",  "prefer",  "love",    "hate",      "avoid",     "dollars", "euros",
      "budget",    "less",   "ideally"};
  return *words;
}

// Words that may sit inside a name between capitalized words ("Bleu de Chanel").
const std::set<std::string, std::less<>>& NameConnectors() {
  static const auto* words =
      new std::set<std::string, std::less<>>{"de", "du", "des", "la", "le", "by", "of", "&", "and"};
  return *words;
}

// Capitalized words that start sentences without being names.
const std::set<std::string, std::less<>>& CommonCapitalized() {
  static const auto* words = new std::set<std::string, std::less<>>{
      "I",      "I'm",  "I'd",  "I've", "The",       "A",      "An",  "My",    "We", "You",
      "It",     "This", "That", "What", "Which",     "Please", "Can", "Could", "Hi", "Hello",
      "Thanks", "Also", "But",  "And",  "Something", "Any",    "Is",  "Are",   "Do", "Does"};
  return *words;
}

bool EndsSentence(std::string_view token) {
  return !token.empty() &&
         (token.back() == '.' || token.back() == '!' || token.back() == '?' || token.back() == ':');
}

std::string StripPunctuation(std::string_view token) {
  const auto begin = token.find_first_not_of("\"'([{");
  if (begin == std::string_view::npos) return "";
  const auto end = token.find_last_not_of("\"')]},.;:!?");
  if (end == std::string_view::npos || end < begin) return "";
  return std::string(token.substr(begin, end + 1 - begin));
}

// Punctuation after a word ends a name ("Bleu de Chanel, or ...").
bool EndsWord(std::string_view token) {
  return !token.empty() &&
         std::string_view(",.;:!?\")]").find(token.back()) != std::string_view::npos;
}

bool IsCapitalized(std::string_view word) {
  return !word.empty() && std::isupper(static_cast<unsigned char>(word.front()));
}

bool IsNumberWord(std::string_view word) {
  return !word.empty() && std::all_of(word.begin(), word.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
}

std::vector<std::string> SplitSpaces(std::string_view text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    const size_t start = i;
    while (i < text.size() && !std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i > start) out.emplace_back(text.substr(start, i - start));
  }
  return out;
}

// "a", "a and b", "a, b and c".
std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

std::vector<std::string> Keywords(std::string_view text) {
  std::vector<std::string> out;
  for (const Word& w : ReadWords(text)) {
    if (w.text.size() < kMinKeywordLength || StopWords().count(w.text) != 0) continue;
    if (WordNumber(w.text)) continue;
    if (std::find(out.begin(), out.end(), w.text) != out.end()) continue;
    out.push_back(w.text);
    if (out.size() == kMaxKeywords) break;
  }
  return out;
}

std::string Fill(std::string_view pattern, const std::string& name, const std::string& topic) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.substr(i, 6) == "{name}") {
      out += name;
      i += 5;
    } else if (pattern.substr(i, 7) == "{topic}") {
      out += topic;
      i += 6;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

constexpr std::array<std::string_view, 3> kOpenings = {"Thanks for asking about {topic}.",
                                                       "Happy to help with {topic}.",
                                                       "Good question about {topic}."};
constexpr std::array<std::string_view, 5> kNameSentences = {
    "{name} is a good place to start, given what you said about {topic}.",
    "Many people who care about {topic} also enjoy {name}.",
    "{name} stands out for its character and how well it fits {topic}.",
    "If you want an alternative, {name} is worth a try.",
    "It is worth trying {name} before you decide, since first impressions change over a day."};
constexpr std::array<std::string_view, 4> kTopicSentences = {
    "When it comes to {topic}, it helps to start with what you already enjoy.",
    "A good first step is to compare a few options that focus on {topic}.",
    "Think about how {topic} fits your day, your budget and the season.",
    "Small differences matter here, so try two or three options side by side."};
// Closing sentences of 1, 2, ... words.
constexpr std::array<std::string_view, 8> kTails = {"Enjoy!",
                                                    "Happy exploring.",
                                                    "Hope this helps.",
                                                    "I hope this helps.",
                                                    "I hope this helps you.",
                                                    "I hope this helps you choose.",
                                                    "I hope this helps you choose well.",
                                                    "Let me know what you think of these."};
constexpr std::array<std::string_view, 2> kClosings = {
    "Let me know if you would like more detail on {topic}.",
    "Tell me more about what you like, and I can narrow this down."};

}  // namespace

uint64_t HashMessages(const std::vector<PromptMessage>& messages) {
  uint64_t h = kFnvOffset;
  auto mix = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= kFnvPrime;
    }
    h ^= 0xff;  // separator, so ("ab","c") and ("a","bc") differ
    h *= kFnvPrime;
  };
  for (const PromptMessage& m : messages) {
    mix(m.role);
    mix(m.content);
  }
  return h;
}

std::vector<std::string> FindNames(std::string_view text) {
  std::vector<std::string> names;
  auto add = [&names](std::string name) {
    if (name.empty() || names.size() >= kMaxNames) return;
    if (std::find(names.begin(), names.end(), name) == names.end())
      names.push_back(std::move(name));
  };
  // Quoted phrases.
  for (size_t open = text.find('"'); open != std::string_view::npos;) {
    const size_t close = text.find('"', open + 1);
    if (close == std::string_view::npos) break;
    const std::string_view quoted = text.substr(open + 1, close - open - 1);
    if (!quoted.empty() && SplitSpaces(quoted).size() <= kMaxQuotedWords) add(std::string(quoted));
    open = text.find('"', close + 1);
  }
  // Runs of capitalized words.
  const std::vector<std::string> tokens = SplitSpaces(text);
  for (size_t i = 0; i < tokens.size();) {
    const bool sentence_start = i == 0 || EndsSentence(tokens[i - 1]);
    const std::string first = StripPunctuation(tokens[i]);
    if (!IsCapitalized(first) || CommonCapitalized().count(first) != 0) {
      ++i;
      continue;
    }
    std::vector<std::string> run{first};
    size_t j = i + 1;
    bool closed = EndsWord(tokens[i]);
    while (!closed && j < tokens.size()) {
      const std::string w = StripPunctuation(tokens[j]);
      const bool connector = NameConnectors().count(w) != 0 && j + 1 < tokens.size() &&
                             IsCapitalized(StripPunctuation(tokens[j + 1]));
      // "Terre d'Hermes": an elided article before a capital belongs to the name.
      const bool elided =
          w.size() > 2 && w[1] == '\'' && std::isupper(static_cast<unsigned char>(w[2]));
      if (!(IsCapitalized(w) || IsNumberWord(w) || connector || elided)) break;
      run.push_back(w);
      closed = EndsWord(tokens[j]);
      ++j;
    }
    // A capital at a sentence start says nothing: "Try Bleu de Chanel" names "Bleu de Chanel",
    // but "Santal 33" and "Bleu de Chanel" at a sentence start stay whole.
    const bool drop_first = sentence_start && run.size() >= 2 && IsCapitalized(run[1]);
    if (drop_first) run.erase(run.begin());
    if (!sentence_start || drop_first || run.size() >= 2) {
      std::string name;
      for (const std::string& w : run) name += (name.empty() ? "" : " ") + w;
      add(std::move(name));
    }
    i = j;
  }
  return names;
}

std::vector<std::string> GenerateReply(const std::vector<PromptMessage>& messages, int tokens,
                                       uint64_t seed) {
  std::vector<std::string> out;
  if (tokens <= 0) return out;
  std::string last_user;
  std::vector<std::string> names;
  for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
    if (it->role == "user" && last_user.empty()) last_user = it->content;
  }
  for (const std::string& n : FindNames(last_user)) names.push_back(n);
  for (const PromptMessage& m : messages) {
    if (m.role == "assistant") continue;
    for (const std::string& n : FindNames(m.content)) {
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
    }
  }
  std::vector<std::string> keywords = Keywords(last_user);
  const std::string topic = keywords.empty() ? "what you are looking for" : JoinList(keywords);

  std::mt19937_64 rng(seed);
  auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };
  std::vector<std::string> sentences;
  sentences.push_back(Fill(kOpenings[pick(kOpenings.size())], "", topic));
  size_t name_index = 0;
  size_t words = 0;
  const size_t wanted = static_cast<size_t>(tokens);
  // Body sentences while they fit; the last few words are a short closing sentence of exactly
  // that length, so a reply rarely ends mid-sentence.
  words = SplitSpaces(sentences.front()).size();
  for (size_t round = 0; words < wanted; ++round) {
    const size_t remaining = wanted - words;
    std::string sentence;
    if (!names.empty() && round % 3 != 2) {
      sentence = Fill(kNameSentences[pick(kNameSentences.size())], names[name_index % names.size()],
                      topic);
      ++name_index;
    } else if (round % 4 == 3) {
      sentence = Fill(kClosings[pick(kClosings.size())], "", topic);
    } else {
      sentence = Fill(kTopicSentences[pick(kTopicSentences.size())], "", topic);
    }
    const size_t length = SplitSpaces(sentence).size();
    if (length > remaining) {
      // Too long: a closing of exactly the remaining words, or a short one that leaves room
      // for a last closing.
      const size_t tail = remaining <= kTails.size()
                              ? remaining
                              : std::min(remaining - kTails.size(), kTails.size() - 1);
      sentence = kTails[tail - 1];
    }
    words += std::min(remaining, SplitSpaces(sentence).size());
    sentences.push_back(std::move(sentence));
  }
  for (const std::string& s : sentences) {
    for (std::string& w : SplitSpaces(s)) {
      if (out.size() == wanted) break;
      out.push_back(out.empty() ? std::move(w) : " " + w);
    }
  }
  std::string& last = out.back();
  while (!last.empty() && (last.back() == ',' || last.back() == ';')) last.pop_back();
  if (!EndsSentence(last)) last += '.';
  return out;
}

int CountTokens(std::string_view text) {
  return static_cast<int>(SplitSpaces(text).size());
}

}  // namespace tidepool::llm::sim
