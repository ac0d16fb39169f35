// Schema filling: a JSON instance valid against a (JSON Schema subset) schema, with its values
// taken from the user's words where the text has cues. Pure functions; thread-safe.
//
// Supported: type (incl. type arrays such as ["string","null"]), properties, required,
// additionalProperties, enum, const, items, minItems/maxItems, uniqueItems, minimum/maximum,
// exclusiveMinimum/exclusiveMaximum, minLength/maxLength, anyOf/oneOf (one branch is chosen),
// local $ref ("#/$defs/X", "#/definitions/X", "#").
//
// Cues (all case-insensitive, whole words, a trailing plural "s"/"es" allowed):
// - string enum: the value mentioned (underscores and hyphens read as spaces) or one of its
//   synonyms; arrays of enum strings: every value mentioned, in order of mention.
// - number/integer: a number near a cue word (the property's name parts and synonyms; for
//   money-like names also "$", "under", "below", ...), clamped to minimum/maximum.
// - boolean: true when a cue word (name parts and synonyms) is mentioned and not negated.
// - Negation ("avoid", "no", "not", "hate", "dislike", "without", "don't ...") covers the words
//   after it up to the end of the clause. Mentions there go to properties whose name contains
//   "avoid" (e.g. notes_avoided) and are ignored by every other property.
// Synonyms: `"x-synonyms": {"woody": ["wood", "cedar"]}` on the property or its items (or, for
// numbers and booleans, `"x-synonyms": ["cue", ...]`), or in the description as
// "synonyms: woody=wood|cedar; fresh=clean|citrus" (or "synonyms: cue|cue" for scalars).
// Without a cue a property gets a default valid value: null when nullable, else the first enum
// value / minimum (or 0) / false / minItems default items.
#pragma once

#include <boost/json/value.hpp>
#include <string>
#include <vector>

namespace tidepool::llm::sim {

// `user_messages`: the user's messages, oldest first. Single values come from the latest
// message that has a cue; arrays gather cues from all of them.
boost::json::value FillSchema(const boost::json::value& schema,
                              const std::vector<std::string>& user_messages);

}  // namespace tidepool::llm::sim
