#include "storage/log.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <future>
#include <random>

#include "storage/coding.h"
#include "storage/crc32c.h"
#include "storage/frame.h"
#include "storage/log_format.h"

namespace tidepool::storage {

struct Log::Segment {
  uint64_t base = 0;
  std::string path;
  uint64_t nonce = 0;
  int64_t created = 0;
  std::unique_ptr<RandomAccessFile> reader;  // pread: safe from many threads
  // Guarded by Log::mu_.
  uint64_t end_seq = 0;
  uint64_t size = 0;  // committed bytes
  uint64_t records = 0;
  int64_t min_ts = 0;
  int64_t max_ts = 0;
  bool sealed = false;
  std::vector<IndexEntry> index;
  std::vector<DamagedRegion> damaged;
};

namespace {

// A group is written over reserved zeros only when this many groups of its size fit in
// LogOptions::reserve_bytes.
constexpr uint64_t kReservedGroupsAtLeast = 16;

constexpr size_t kReadChunk = 256u << 10;

std::string IndexFileName(uint64_t base_seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020" PRIu64 "%s", base_seq, kIndexSuffix);
  return buf;
}

// Parses "<20 digits>.log"; false for anything else.
bool ParseSegmentName(const std::string& name, uint64_t* base) {
  const size_t suffix = sizeof(kSegmentSuffix) - 1;
  if (name.size() != kSegmentNameDigits + suffix) return false;
  if (name.compare(kSegmentNameDigits, suffix, kSegmentSuffix) != 0) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < kSegmentNameDigits; ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    v = v * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  *base = v;
  return true;
}

uint64_t RandomNonce() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  return rng();
}

struct IndexFile {
  uint64_t base = 0;
  uint64_t end = 0;
  uint64_t size = 0;
  int64_t min_ts = 0;
  int64_t max_ts = 0;
  std::vector<IndexEntry> entries;
};

std::string EncodeIndexFile(const IndexFile& f) {
  std::string out;
  PutFixed64(&out, kIndexMagic);
  out.push_back(static_cast<char>(kFormatVersion));
  out.append(7, '\0');
  PutFixed64(&out, f.base);
  PutFixed64(&out, f.end);
  PutFixed64(&out, f.size);
  PutFixed64(&out, static_cast<uint64_t>(f.min_ts));
  PutFixed64(&out, static_cast<uint64_t>(f.max_ts));
  PutFixed32(&out, static_cast<uint32_t>(f.entries.size()));
  for (const auto& e : f.entries) {
    PutFixed64(&out, e.seq);
    PutFixed64(&out, e.offset);
    PutFixed64(&out, static_cast<uint64_t>(e.timestamp));
  }
  PutFixed32(&out, crc32c::Mask(crc32c::Value(out)));
  return out;
}

bool DecodeIndexFile(std::string_view in, IndexFile* f) {
  if (in.size() < kIndexHeaderSize + 4) return false;
  const uint32_t stored = DecodeFixed32(in.data() + in.size() - 4);
  if (crc32c::Unmask(stored) != crc32c::Value(in.data(), in.size() - 4)) return false;
  Decoder d(in.substr(0, in.size() - 4));
  uint64_t magic = 0;
  uint8_t version = 0;
  uint32_t count = 0;
  if (!d.U64(&magic) || magic != kIndexMagic || !d.U8(&version) || version != kFormatVersion) {
    return false;
  }
  Decoder rest(d.rest().substr(7));  // reserved bytes
  if (!rest.U64(&f->base) || !rest.U64(&f->end) || !rest.U64(&f->size) || !rest.I64(&f->min_ts) ||
      !rest.I64(&f->max_ts) || !rest.U32(&count)) {
    return false;
  }
  if (rest.rest().size() != static_cast<size_t>(count) * kIndexEntrySize) return false;
  f->entries.resize(count);
  for (auto& e : f->entries) {
    if (!rest.U64(&e.seq) || !rest.U64(&e.offset) || !rest.I64(&e.timestamp)) return false;
  }
  return true;
}

bool DecodeRecordPrefix(std::string_view payload, uint64_t* seq, int64_t* ts) {
  Decoder d(payload);
  return d.U64(seq) && d.I64(ts);
}

}  // namespace

std::string SegmentFileName(uint64_t base_seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020" PRIu64 "%s", base_seq, kSegmentSuffix);
  return buf;
}

Log::Log(Env* env, std::string dir, LogOptions options, Flusher* flusher)
    : env_(env), dir_(std::move(dir)), options_(options), flusher_(flusher) {}

Log::~Log() {
  {
    std::lock_guard lock(pending_mu_);
    closing_ = true;
  }
  pending_cv_.notify_all();
  flusher_->Schedule(this);
  flusher_->Forget(this);
  flusher_->WaitForCompletions();
  if (writer_) (void)writer_->Close();
}

Result<std::unique_ptr<Log>> Log::Open(Env* env, std::string dir, LogOptions options,
                                       Flusher* flusher) {
  std::unique_ptr<Log> log(new Log(env, std::move(dir), options, flusher));
  Status s = log->Recover();
  if (!s.ok()) return s.WithContext("open log " + log->dir_);
  return log;
}

Status Log::OpenSegmentForRead(Segment* seg) {
  TP_ASSIGN_OR_RETURN(seg->reader, env_->OpenRandomAccess(seg->path));
  return Status::Ok();
}

Status Log::Recover() {
  TP_RETURN_IF_ERROR(env_->CreateDirs(dir_));
  TP_ASSIGN_OR_RETURN(auto names, env_->ListDir(dir_));
  std::vector<uint64_t> bases;
  for (const auto& name : names) {
    uint64_t base = 0;
    if (ParseSegmentName(name, &base)) {
      bases.push_back(base);
    } else if (name.ends_with(".tmp")) {
      TP_RETURN_IF_ERROR(env_->RemoveFile(JoinPath(dir_, name)));  // an unfinished index
    }
  }
  std::sort(bases.begin(), bases.end());

  for (size_t i = 0; i < bases.size(); ++i) {
    const bool is_last = i + 1 == bases.size();
    auto seg = std::make_shared<Segment>();
    seg->base = bases[i];
    seg->path = JoinPath(dir_, SegmentFileName(seg->base));
    const std::string index_path = JoinPath(dir_, IndexFileName(seg->base));
    TP_ASSIGN_OR_RETURN(uint64_t file_size, env_->FileSize(seg->path));

    bool trusted = false;
    if (!is_last && env_->FileExists(index_path)) {
      IndexFile idx;
      auto content = env_->ReadFileToString(index_path);
      if (content.ok() && DecodeIndexFile(*content, &idx) && idx.base == seg->base &&
          idx.size == file_size && file_size >= kSegmentHeaderFrameSize) {
        // Read the header too: it holds the creation time and proves the file is ours.
        TP_RETURN_IF_ERROR(OpenSegmentForRead(seg.get()));
        std::string head(kSegmentHeaderFrameSize, '\0');
        TP_ASSIGN_OR_RETURN(size_t n,
                            seg->reader->Read(0, std::as_writable_bytes(std::span(head))));
        ScanOptions hopts;
        hopts.expected_base = seg->base;
        SegmentScan hs = ScanSegment(std::string_view(head).substr(0, n), hopts);
        if (hs.header_valid) {
          trusted = true;
          seg->nonce = hs.header.nonce;
          seg->created = hs.header.created_micros;
          seg->end_seq = idx.end;
          seg->size = idx.size;
          seg->records = idx.end - idx.base;
          seg->min_ts = idx.min_ts;
          seg->max_ts = idx.max_ts;
          seg->index = std::move(idx.entries);
          seg->sealed = true;
        }
      }
    }

    if (!trusted) {
      ++recovery_.segments_scanned;
      TP_ASSIGN_OR_RETURN(std::string data, env_->ReadFileToString(seg->path));
      ScanOptions sopts;
      sopts.expected_base = seg->base;
      sopts.index_interval_bytes = options_.index_interval_bytes;
      sopts.strict = options_.strict_recovery;
      sopts.sealed = !is_last;
      SegmentScan scan = ScanSegment(data, sopts);
      if (!scan.status.ok()) return scan.status.WithContext(seg->path);
      if (!scan.header_valid) {
        // Created by a crash before its header was durable: nothing in it was acknowledged.
        TP_RETURN_IF_ERROR(env_->RemoveFile(seg->path));
        if (env_->FileExists(index_path)) TP_RETURN_IF_ERROR(env_->RemoveFile(index_path));
        TP_RETURN_IF_ERROR(env_->SyncDir(dir_));
        ++recovery_.empty_segments_removed;
        continue;
      }
      if (scan.valid_end < data.size()) {
        TP_ASSIGN_OR_RETURN(auto w, env_->OpenAppendable(seg->path));
        TP_RETURN_IF_ERROR(w->Truncate(scan.valid_end));
        TP_RETURN_IF_ERROR(w->Sync());
        TP_RETURN_IF_ERROR(w->Close());
        recovery_.torn_bytes_truncated += scan.torn_bytes;
        recovery_.zero_tail_bytes_dropped += scan.zero_tail_bytes;
      }
      for (const auto& d : scan.damaged) {
        const std::string lost =
            d.lost_end > d.lost_begin
                ? "records [" + std::to_string(d.lost_begin) + ", " + std::to_string(d.lost_end) +
                      ") lost"
                : "records from " + std::to_string(d.lost_begin) + " to the segment's end lost";
        recovery_.corruption.push_back(seg->path + ": bytes [" + std::to_string(d.begin) + ", " +
                                       std::to_string(d.end) + ") " + d.reason + "; " + lost);
      }
      TP_RETURN_IF_ERROR(OpenSegmentForRead(seg.get()));
      seg->nonce = scan.header.nonce;
      seg->created = scan.header.created_micros;
      seg->end_seq = scan.end_seq;
      seg->size = scan.valid_end;
      seg->records = scan.record_count;
      seg->min_ts = scan.min_timestamp;
      seg->max_ts = scan.max_timestamp;
      seg->index = std::move(scan.index);
      seg->damaged = std::move(scan.damaged);
      seg->sealed = !is_last;
      if (seg->sealed && seg->damaged.empty()) (void)WriteIndexFile(*seg);
    }

    if (!segments_.empty()) {
      const auto& prev = *segments_.back();
      if (seg->base < prev.end_seq) {
        return Status::Corruption(seg->path + " starts at sequence " + std::to_string(seg->base) +
                                  " inside the previous segment, which ends at " +
                                  std::to_string(prev.end_seq));
      }
      if (seg->base > prev.end_seq) {
        std::string line = "records [" + std::to_string(prev.end_seq) + ", " +
                           std::to_string(seg->base) + ") missing before " + seg->path;
        if (options_.strict_recovery) return Status::Corruption(line);
        recovery_.corruption.push_back(line);
      }
    }
    segments_.push_back(std::move(seg));
  }
  recovery_.segments = segments_.size();

  if (segments_.empty()) {
    TP_RETURN_IF_ERROR(StartNewSegment(0));
  } else {
    auto& active = *segments_.back();
    if (active.sealed) {
      // Sealed, but its successor was never durably created: keep appending to it.
      active.sealed = false;
    }
    const std::string index_path = JoinPath(dir_, IndexFileName(active.base));
    if (env_->FileExists(index_path)) TP_RETURN_IF_ERROR(env_->RemoveFile(index_path));
    if (!active.damaged.empty() && active.end_seq > active.base) {
      // Keep the damaged bytes as they are, in a sealed segment: they prove which sequence
      // numbers were once durable, so that none of them is ever handed out again.
      active.sealed = true;
      TP_RETURN_IF_ERROR(StartNewSegment(active.end_seq));
    } else {
      TP_ASSIGN_OR_RETURN(writer_, env_->OpenAppendable(active.path));
      if (writer_->Size() != active.size) {
        return Status::Internal("active segment size changed during recovery: " + active.path);
      }
    }
  }
  for (const auto& seg : segments_) last_timestamp_ = std::max(last_timestamp_, seg->max_ts);
  const auto& active = *segments_.back();
  last_index_offset_ = active.index.empty() ? 0 : active.index.back().offset;
  first_seq_ = segments_.front()->base;
  next_seq_ = dirty_seq_ = active.end_seq;
  return Status::Ok();
}

Status Log::StartNewSegment(uint64_t base_seq) {
  auto seg = std::make_shared<Segment>();
  seg->base = base_seq;
  seg->end_seq = base_seq;
  seg->path = JoinPath(dir_, SegmentFileName(base_seq));
  seg->nonce = RandomNonce();
  seg->created = env_->NowMicros();
  SegmentHeader header{base_seq, seg->created, seg->nonce};
  std::string frame;
  AppendFrame(&frame, FrameType::kSegmentHeader, EncodeSegmentHeader(header));

  TP_ASSIGN_OR_RETURN(auto writer, env_->OpenAppendable(seg->path));
  if (writer->Size() != 0) TP_RETURN_IF_ERROR(writer->Truncate(0));
  TP_RETURN_IF_ERROR(writer->Append(std::as_bytes(std::span(frame))));
  TP_RETURN_IF_ERROR(writer->Sync());
  TP_RETURN_IF_ERROR(env_->SyncDir(dir_));
  TP_RETURN_IF_ERROR(OpenSegmentForRead(seg.get()));
  seg->size = frame.size();
  if (writer_) (void)writer_->Close();
  writer_ = std::move(writer);
  last_index_offset_ = 0;
  std::lock_guard lock(mu_);
  segments_.push_back(std::move(seg));
  return Status::Ok();
}

Status Log::WriteIndexFile(const Segment& seg) {
  IndexFile f;
  f.base = seg.base;
  f.end = seg.end_seq;
  f.size = seg.size;
  f.min_ts = seg.min_ts;
  f.max_ts = seg.max_ts;
  f.entries = seg.index;
  std::string bytes = EncodeIndexFile(f);
  return env_->WriteFileAtomic(JoinPath(dir_, IndexFileName(seg.base)),
                               std::as_bytes(std::span(bytes)));
}

Status Log::SealActive() {
  std::shared_ptr<Segment> active;
  {
    std::lock_guard lock(mu_);
    active = segments_.back();
    active->sealed = true;
  }
  if (writer_ && writer_->Reserved() > 0) {
    // A sealed segment ends at its last group, durably, before its successor exists: recovery
    // reads anything after that in a sealed segment as damage, not as a reserved tail.
    TP_RETURN_IF_ERROR(writer_->Truncate(active->size));
    TP_RETURN_IF_ERROR(writer_->Sync());
  }
  // The index is an optimisation: without it the next open scans the segment.
  if (active->damaged.empty()) (void)WriteIndexFile(*active);
  return Status::Ok();
}

void Log::AppendAsync(std::vector<std::string> records, AppendCallback done) {
  if (records.empty()) {
    done(Status::InvalidArgument("an append needs at least one record"));
    return;
  }
  size_t bytes = 0;
  for (const auto& r : records) {
    if (r.size() > options_.max_record_bytes) {
      done(Status::InvalidArgument("record of " + std::to_string(r.size()) +
                                   " bytes exceeds the limit of " +
                                   std::to_string(options_.max_record_bytes)));
      return;
    }
    bytes += RecordFrameSize(r.size());
  }
  {
    std::lock_guard lock(mu_);
    if (!failed_.ok()) {
      Status s = failed_;
      done(s);
      return;
    }
  }
  {
    std::lock_guard lock(pending_mu_);
    if (closing_) {
      done(Status::Unavailable("log " + dir_ + " is closing"));
      return;
    }
    pending_bytes_ += bytes;
    pending_.push_back(PendingAppend{std::move(records), std::move(done), bytes});
  }
  pending_cv_.notify_one();
  flusher_->Schedule(this);
}

Result<SeqRange> Log::Append(std::vector<std::string> records) {
  std::promise<Result<SeqRange>> promise;
  auto future = promise.get_future();
  AppendAsync(std::move(records),
              [&promise](Result<SeqRange> r) { promise.set_value(std::move(r)); });
  return future.get();
}

void Log::EnterFailedState(Status status, std::deque<PendingAppend>* batch) {
  std::deque<PendingAppend> rest;
  {
    std::lock_guard plock(pending_mu_);
    rest.swap(pending_);
    pending_bytes_ = 0;
  }
  {
    std::lock_guard lock(mu_);
    failed_ = status;
  }
  FailPending(status, batch);
  FailPending(status, &rest);
}

void Log::FailPending(const Status& status, std::deque<PendingAppend>* appends) {
  for (auto& a : *appends) a.done(status);
  appends->clear();
}

void Log::CommitPending() {
  std::deque<PendingAppend> batch;
  size_t batch_bytes = 0;
  bool more = false;
  {
    std::unique_lock lock(pending_mu_);
    if (pending_.empty() && !roll_requested_.load()) return;
    if (options_.max_group_wait_micros > 0 && pending_bytes_ < options_.max_group_bytes &&
        !closing_) {
      pending_cv_.wait_for(lock, std::chrono::microseconds(options_.max_group_wait_micros),
                           [&] { return pending_bytes_ >= options_.max_group_bytes || closing_; });
    }
    while (!pending_.empty()) {
      auto& front = pending_.front();
      if (!batch.empty() && batch_bytes + front.bytes > options_.max_group_bytes) break;
      batch_bytes += front.bytes;
      pending_bytes_ -= front.bytes;
      batch.push_back(std::move(front));
      pending_.pop_front();
    }
    more = !pending_.empty();
  }
  if (more) flusher_->Schedule(this);

  std::shared_ptr<Segment> active;
  {
    std::lock_guard lock(mu_);
    if (!failed_.ok()) {
      Status s = failed_;
      FailPending(s, &batch);
      return;
    }
    active = segments_.back();
  }

  const int64_t now = env_->NowMicros();
  const bool has_records = active->end_seq > active->base;
  const bool too_big = active->size + kGroupFrameSize + batch_bytes > options_.segment_max_bytes;
  const bool too_old = options_.segment_max_age_micros > 0 &&
                       now - active->created >= options_.segment_max_age_micros;
  const bool roll = roll_requested_.exchange(false);
  if (has_records && (roll || (!batch.empty() && (too_big || too_old)))) {
    Status s = SealActive();
    if (s.ok()) s = StartNewSegment(dirty_seq_);
    if (!s.ok()) {
      std::lock_guard lock(mu_);
      failed_ = Status::IOError("log " + dir_ +
                                " is read-only: could not start a new segment: " + s.ToString());
      FailPending(failed_, &batch);
      return;
    }
    active = segments_.back();  // only this thread changes the tail
  }
  if (batch.empty()) return;

  // Build the group: GROUP frame, then a RECORD frame per record.
  uint64_t count = 0;
  for (const auto& a : batch) count += a.records.size();
  const int64_t ts = std::max(now, last_timestamp_);
  const uint64_t first = dirty_seq_;
  const uint64_t base_offset = active->size;
  group_buffer_.clear();
  group_buffer_.reserve(kGroupFrameSize + batch_bytes);
  AppendFrame(&group_buffer_, FrameType::kGroup,
              EncodeGroupHeader(first, static_cast<uint32_t>(count),
                                static_cast<uint32_t>(batch_bytes), active->nonce));
  std::vector<IndexEntry> new_entries;
  bool have_entry = !active->index.empty();
  uint64_t last_entry = last_index_offset_;
  uint64_t seq = first;
  char prefix[kRecordPrefixSize];
  for (const auto& a : batch) {
    for (const auto& r : a.records) {
      const uint64_t offset = seq == first ? base_offset : base_offset + group_buffer_.size();
      if (!have_entry || offset - last_entry >= options_.index_interval_bytes) {
        new_entries.push_back({seq, offset, ts});
        last_entry = offset;
        have_entry = true;
      }
      std::memcpy(prefix, &seq, 8);
      std::memcpy(prefix + 8, &ts, 8);
      AppendFrame2(&group_buffer_, FrameType::kRecord, std::string_view(prefix, sizeof(prefix)), r);
      ++seq;
    }
  }

  // Zeros ahead pay off for small groups, whose fdatasync would otherwise write the inode as
  // well as a few KiB of data. Zeroing costs a second write of every byte, which a large group
  // does not win back: those are appended as they are (storage_bench, docs/benchmarks.md).
  const bool small_group = group_buffer_.size() <= options_.reserve_bytes / kReservedGroupsAtLeast;
  if (small_group && writer_->Reserved() < group_buffer_.size()) {
    // Up to the segment's size limit.
    const uint64_t room =
        options_.segment_max_bytes > base_offset ? options_.segment_max_bytes - base_offset : 0;
    const uint64_t want =
        std::max<uint64_t>(group_buffer_.size(), std::min(options_.reserve_bytes, room));
    // Only an optimisation: when it fails (a full disk), the append says what is wrong.
    (void)writer_->Reserve(want);
  }
  Status ws = writer_->Append(std::as_bytes(std::span(group_buffer_)));
  if (!ws.ok()) {
    // Undo the partial write so the file ends at the last durable group again.
    Status undo = writer_->Truncate(base_offset);
    if (undo.ok()) undo = writer_->Sync();
    if (undo.ok()) {
      FailPending(ws.WithContext("append to log " + dir_), &batch);
      return;
    }
    EnterFailedState(
        Status::IOError("log " + dir_ + " is read-only: a write failed (" + ws.ToString() +
                        ") and could not be undone (" + undo.ToString() + ")"),
        &batch);
    return;
  }
  Status ss = writer_->Sync();
  if (!ss.ok()) {
    // After a failed fdatasync the state of the file on disk is unknown: never write again.
    EnterFailedState(Status::IOError("log " + dir_ + " is read-only after a failed fdatasync of " +
                                     active->path + " (" + ss.ToString() +
                                     "); restart to recover from the last durable record"),
                     &batch);
    return;
  }

  dirty_seq_ = seq;
  last_timestamp_ = ts;
  last_index_offset_ = last_entry;
  {
    std::lock_guard lock(mu_);
    if (active->records == 0) active->min_ts = ts;
    active->max_ts = ts;
    active->records += count;
    active->end_seq = seq;
    active->size = base_offset + group_buffer_.size();
    active->index.insert(active->index.end(), new_entries.begin(), new_entries.end());
    next_seq_ = seq;
  }
  // Wake the appenders off this thread: the next group's write and fsync need not wait.
  flusher_->Complete([batch = std::move(batch), first, ts]() mutable {
    uint64_t next = first;
    for (auto& a : batch) {
      SeqRange range{Seq(next), a.records.size(), ts};
      next += a.records.size();
      a.done(range);
    }
  });
}

std::shared_ptr<Log::Segment> Log::FindSegment(uint64_t seq) const {
  auto it = std::upper_bound(segments_.begin(), segments_.end(), seq,
                             [](uint64_t s, const auto& seg) { return s < seg->base; });
  if (it == segments_.begin()) return nullptr;
  return *std::prev(it);
}

Status Log::ReadSegment(const std::shared_ptr<Segment>& seg, uint64_t from, size_t max_records,
                        size_t max_bytes, std::vector<LogRecord>* out, size_t* out_bytes) const {
  uint64_t limit = 0;
  uint64_t pos = kSegmentHeaderFrameSize;
  std::vector<DamagedRegion> damaged;
  {
    std::lock_guard lock(mu_);
    limit = seg->size;
    auto it = std::upper_bound(seg->index.begin(), seg->index.end(), from,
                               [](uint64_t s, const IndexEntry& e) { return s < e.seq; });
    if (it != seg->index.begin()) pos = std::prev(it)->offset;
    damaged = seg->damaged;
  }

  std::string buf;
  uint64_t buf_start = 0;
  // Makes [p, p + n) available in buf; false if it runs past `limit`.
  auto ensure = [&](uint64_t p, size_t n) -> Result<bool> {
    if (p + n > limit) return false;
    if (p >= buf_start && p + n <= buf_start + buf.size()) return true;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(std::max(n, kReadChunk), limit - p));
    buf.resize(want);
    TP_ASSIGN_OR_RETURN(size_t got, seg->reader->Read(p, std::as_writable_bytes(std::span(buf))));
    buf.resize(got);
    buf_start = p;
    return got >= n;
  };
  auto corrupt = [&](uint64_t p, const std::string& why) {
    return Status::Corruption(seg->path + " at offset " + std::to_string(p) + ": " + why);
  };

  while (pos < limit && out->size() < max_records && (out->empty() || *out_bytes < max_bytes)) {
    for (const auto& d : damaged) {
      if (pos >= d.begin && pos < d.end) pos = d.end;
    }
    if (pos >= limit) break;
    TP_ASSIGN_OR_RETURN(bool have_header, ensure(pos, kFrameHeaderSize));
    if (!have_header) return corrupt(pos, "frame header runs past the committed end");
    const uint32_t length = DecodeFixed32(buf.data() + (pos - buf_start) + 4);
    if (length > kMaxFramePayload) return corrupt(pos, "frame length out of range");
    TP_ASSIGN_OR_RETURN(bool have_frame, ensure(pos, kFrameHeaderSize + length));
    if (!have_frame) return corrupt(pos, "frame runs past the committed end");
    Frame f = ParseFrame(buf, static_cast<size_t>(pos - buf_start));
    if (f.status != FrameStatus::kOk) return corrupt(pos, FrameStatusName(f.status));
    if (f.type == FrameType::kRecord) {
      uint64_t seq = 0;
      int64_t ts = 0;
      if (!DecodeRecordPrefix(f.payload, &seq, &ts)) return corrupt(pos, "short record");
      if (seq >= from) {
        std::string_view data = f.payload.substr(kRecordPrefixSize);
        out->push_back(LogRecord{Seq(seq), ts, std::string(data)});
        *out_bytes += data.size();
      }
    } else if (f.type != FrameType::kGroup) {
      return corrupt(pos, "unexpected frame type " + std::to_string(static_cast<int>(f.type)));
    }
    pos += f.size;
  }
  return Status::Ok();
}

Result<std::vector<LogRecord>> Log::Read(Seq from, size_t max_records, size_t max_bytes) const {
  std::vector<LogRecord> out;
  size_t bytes = 0;
  uint64_t seq = from.value;
  {
    std::lock_guard lock(mu_);
    if (seq < first_seq_) {
      return Status::OutOfRange("sequence " + std::to_string(seq) +
                                " is no longer stored; the log starts at " +
                                std::to_string(first_seq_));
    }
  }
  while (out.size() < max_records && (out.empty() || bytes < max_bytes)) {
    std::shared_ptr<Segment> seg;
    uint64_t seg_end = 0;
    {
      std::lock_guard lock(mu_);
      if (seq >= next_seq_) break;
      seg = FindSegment(seq);
      if (!seg) break;
      seg_end = seg->end_seq;
    }
    TP_RETURN_IF_ERROR(ReadSegment(seg, seq, max_records, max_bytes, &out, &bytes));
    if (seg_end <= seq) break;
    seq = seg_end;
  }
  return out;
}

Result<Seq> Log::SeekTime(int64_t micros) const {
  uint64_t from = 0;
  {
    std::lock_guard lock(mu_);
    const Segment* hit = nullptr;
    for (const auto& seg : segments_) {
      if (seg->records > 0 && seg->max_ts >= micros) {
        hit = seg.get();
        break;
      }
    }
    if (hit == nullptr) return Seq(next_seq_);
    from = hit->base;
    for (const auto& e : hit->index) {
      if (e.timestamp >= micros) break;
      from = e.seq;
    }
  }
  for (;;) {
    TP_ASSIGN_OR_RETURN(auto records, Read(Seq(from), 1024, 1u << 20));
    if (records.empty()) return next_seq();
    for (const auto& r : records) {
      if (r.timestamp >= micros) return r.seq;
    }
    from = records.back().seq.value + 1;
  }
}

Seq Log::first_seq() const {
  std::lock_guard lock(mu_);
  return Seq(first_seq_);
}

Seq Log::next_seq() const {
  std::lock_guard lock(mu_);
  return Seq(next_seq_);
}

Status Log::health() const {
  std::lock_guard lock(mu_);
  return failed_;
}

std::vector<SegmentInfo> Log::Segments() const {
  std::lock_guard lock(mu_);
  std::vector<SegmentInfo> out;
  out.reserve(segments_.size());
  for (const auto& s : segments_) {
    out.push_back(SegmentInfo{Seq(s->base), Seq(s->end_seq), s->size, s->created, s->min_ts,
                              s->max_ts, s.get() == segments_.back().get()});
  }
  return out;
}

Result<size_t> Log::RemoveSegmentsBefore(Seq keep_from) {
  std::vector<std::shared_ptr<Segment>> doomed;
  {
    std::lock_guard lock(mu_);
    while (segments_.size() > 1 && segments_.front()->sealed &&
           segments_.front()->end_seq <= keep_from.value) {
      doomed.push_back(segments_.front());
      segments_.erase(segments_.begin());
    }
    first_seq_ = segments_.front()->base;
  }
  for (const auto& seg : doomed) {
    TP_RETURN_IF_ERROR(env_->RemoveFile(seg->path));
    const std::string index_path = JoinPath(dir_, IndexFileName(seg->base));
    if (env_->FileExists(index_path)) TP_RETURN_IF_ERROR(env_->RemoveFile(index_path));
  }
  if (!doomed.empty()) TP_RETURN_IF_ERROR(env_->SyncDir(dir_));
  return doomed.size();
}

void Log::RequestRoll() {
  roll_requested_.store(true);
  flusher_->Schedule(this);
}

void Log::Maintain() {
  bool old = false;
  {
    std::lock_guard lock(mu_);
    const auto& active = *segments_.back();
    old = options_.segment_max_age_micros > 0 && active.end_seq > active.base &&
          env_->NowMicros() - active.created >= options_.segment_max_age_micros;
  }
  if (old) RequestRoll();
}

}  // namespace tidepool::storage
