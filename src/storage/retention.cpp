#include "storage/retention.h"

namespace tidepool::storage {
namespace {

bool Expired(const SegmentInfo& seg, int64_t max_age, int64_t now) {
  return max_age > 0 && seg.max_timestamp < now - max_age;
}

bool Needed(const SegmentInfo& seg, const RetentionPolicy& policy, int64_t now) {
  if (seg.end == seg.base) return false;  // holds no records
  if (policy.topic_retention_micros > 0 && !Expired(seg, policy.topic_retention_micros, now)) {
    return true;
  }
  for (const auto& need : policy.needs) {
    const bool has_needed_seq = seg.end > need.from;
    if (has_needed_seq && !Expired(seg, need.max_age_micros, now)) return true;
  }
  return false;
}

}  // namespace

Seq PlanRetention(const std::vector<SegmentInfo>& segments, const RetentionPolicy& policy,
                  int64_t now_micros) {
  if (segments.empty()) return Seq(0);
  Seq keep_from = segments.front().base;
  for (const auto& seg : segments) {
    if (seg.active || Needed(seg, policy, now_micros)) break;
    keep_from = seg.end;
  }
  return keep_from;
}

}  // namespace tidepool::storage
