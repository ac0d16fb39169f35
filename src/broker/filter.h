// The Pub/Sub subscription filter language, over message attributes:
//   attributes:KEY                 the attribute is present
//   attributes.KEY = "v"           present and equal;   != : absent or different
//   hasPrefix(attributes.KEY, "p") present and starts with p
//   NOT x (or -x), x AND y, x OR y, ( x )
// AND and OR cannot be mixed without parentheses, as in the real service. A KEY is a run of
// letters, digits, '-' and '_', or a string literal. At most 256 bytes.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tidepool::broker {

class Filter {
 public:
  // Parses `text`; INVALID_ARGUMENT with the position and the problem on error. An empty
  // text is the filter that matches everything.
  static Result<Filter> Parse(std::string_view text);

  bool Matches(const std::map<std::string, std::string>& attributes) const;
  bool empty() const { return root_ == nullptr; }

  struct Node;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace tidepool::broker
