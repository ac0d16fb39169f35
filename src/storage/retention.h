// Retention planning (docs/storage-format.md, "Retention"): which prefix of a log's segments
// nobody needs any more. Pure, so the rules are unit-tested apart from the files.
#pragma once

#include <cstdint>
#include <vector>

#include "storage/log.h"

namespace tidepool::storage {

// One reader that still needs data: every record at or above `from` that is younger than
// `max_age_micros` (0: whatever its age). A subscription needs {its ack floor, its retention};
// a subscription that retains acked messages, or a snapshot, needs {0 or the snapshot's floor,
// the retention}.
struct RetentionNeed {
  Seq from;
  int64_t max_age_micros = 0;
};

struct RetentionPolicy {
  // The topic's own retention: records younger than this are kept for everyone (seek back,
  // subscriptions created later). 0: the topic keeps nothing for itself.
  int64_t topic_retention_micros = 0;
  std::vector<RetentionNeed> needs;
};

// Returns the sequence from which everything must be kept: the end of the longest prefix of
// sealed segments that no need covers. Never past the active segment's base.
Seq PlanRetention(const std::vector<SegmentInfo>& segments, const RetentionPolicy& policy,
                  int64_t now_micros);

}  // namespace tidepool::storage
