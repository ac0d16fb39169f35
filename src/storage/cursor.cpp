#include "storage/cursor.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <future>

#include "storage/coding.h"
#include "storage/frame.h"
#include "storage/log_format.h"

namespace tidepool::storage {
namespace {

constexpr char kCheckpointPrefix[] = "checkpoint-";
constexpr char kWalPrefix[] = "wal-";
constexpr size_t kMaxBatchFrameItems = 100000;  // keeps one frame far below kMaxFramePayload

std::string GenName(const char* prefix, uint64_t gen) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%s%020" PRIu64, prefix, gen);
  return buf;
}

bool ParseGenName(const std::string& name, const std::string& prefix, uint64_t* gen) {
  if (!name.starts_with(prefix) || name.size() != prefix.size() + 20) return false;
  uint64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
    v = v * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  *gen = v;
  return true;
}

void PutRanges(std::string* out, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  PutFixed32(out, static_cast<uint32_t>(ranges.size()));
  for (const auto& [lo, hi] : ranges) {
    PutFixed64(out, lo);
    PutFixed64(out, hi);
  }
}

bool GetRanges(Decoder* d, std::vector<std::pair<uint64_t, uint64_t>>* ranges) {
  uint32_t n = 0;
  if (!d->U32(&n) || d->rest().size() < static_cast<size_t>(n) * 16) return false;
  ranges->resize(n);
  for (auto& [lo, hi] : *ranges) {
    if (!d->U64(&lo) || !d->U64(&hi) || hi < lo) return false;
  }
  return true;
}

void PutDeliveries(std::string* out, const std::vector<std::pair<uint64_t, Delivery>>& ds) {
  PutFixed32(out, static_cast<uint32_t>(ds.size()));
  for (const auto& [seq, d] : ds) {
    PutFixed64(out, seq);
    PutFixed32(out, d.attempts);
    PutFixed64(out, static_cast<uint64_t>(d.lease_deadline));
  }
}

bool GetDeliveries(Decoder* d, std::vector<std::pair<uint64_t, Delivery>>* ds) {
  uint32_t n = 0;
  if (!d->U32(&n) || d->rest().size() < static_cast<size_t>(n) * 20) return false;
  ds->resize(n);
  for (auto& [seq, del] : *ds) {
    if (!d->U64(&seq) || !d->U32(&del.attempts) || !d->I64(&del.lease_deadline)) return false;
  }
  return true;
}

std::string EncodeCheckpoint(uint64_t gen, const CursorState& s) {
  std::string payload;
  PutFixed64(&payload, gen);
  PutFixed64(&payload, s.floor().value);
  std::vector<std::pair<uint64_t, uint64_t>> ranges(s.acked_ranges().begin(),
                                                    s.acked_ranges().end());
  PutRanges(&payload, ranges);
  std::vector<std::pair<uint64_t, Delivery>> ds(s.deliveries().begin(), s.deliveries().end());
  PutDeliveries(&payload, ds);
  std::string frame;
  AppendFrame(&frame, FrameType::kCursorCheckpoint, payload);
  return frame;
}

bool DecodeCheckpoint(std::string_view data, uint64_t* gen, CursorState* s) {
  Frame f = ParseFrame(data, 0);
  if (f.status != FrameStatus::kOk || f.type != FrameType::kCursorCheckpoint ||
      f.size != data.size()) {
    return false;
  }
  Decoder d(f.payload);
  uint64_t floor = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::pair<uint64_t, Delivery>> ds;
  if (!d.U64(gen) || !d.U64(&floor) || !GetRanges(&d, &ranges) || !GetDeliveries(&d, &ds) ||
      !d.empty()) {
    return false;
  }
  CursorState state;
  std::vector<std::pair<Seq, Seq>> acked;
  for (const auto& [lo, hi] : ranges) acked.emplace_back(Seq(lo), Seq(hi));
  state.Reset(Seq(floor), acked);
  for (const auto& [seq, del] : ds) state.SetDelivery(Seq(seq), del);
  *s = std::move(state);
  return true;
}

bool IsCursorOpFrame(const Frame& f) {
  return f.status == FrameStatus::kOk &&
         (f.type == FrameType::kCursorAck || f.type == FrameType::kCursorDelivery ||
          f.type == FrameType::kCursorReset);
}

}  // namespace

// ---- CursorState ----

bool CursorState::IsAcked(Seq seq) const {
  const uint64_t s = seq.value;
  if (s < floor_) return true;
  auto it = ranges_.upper_bound(s);
  if (it == ranges_.begin()) return false;
  --it;
  return s < it->second;
}

void CursorState::Ack(Seq lo_seq, Seq hi_seq) {
  uint64_t lo = std::max(lo_seq.value, floor_);
  uint64_t hi = hi_seq.value;
  if (hi <= lo) return;
  // Drop delivery state of what is now acknowledged.
  deliveries_.erase(deliveries_.lower_bound(lo), deliveries_.lower_bound(hi));
  // Merge with every range that overlaps or touches [lo, hi).
  auto it = ranges_.upper_bound(lo);
  if (it != ranges_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= lo) it = prev;
  }
  while (it != ranges_.end() && it->first <= hi) {
    lo = std::min(lo, it->first);
    hi = std::max(hi, it->second);
    it = ranges_.erase(it);
  }
  if (lo == floor_) {
    floor_ = hi;
  } else {
    ranges_.emplace(lo, hi);
  }
}

void CursorState::SetDelivery(Seq seq, Delivery d) {
  if (IsAcked(seq)) return;
  deliveries_[seq.value] = d;
}

void CursorState::Reset(Seq floor, const std::vector<std::pair<Seq, Seq>>& acked) {
  floor_ = floor.value;
  ranges_.clear();
  deliveries_.clear();
  for (const auto& [lo, hi] : acked) Ack(lo, hi);
}

std::optional<Delivery> CursorState::delivery(Seq seq) const {
  auto it = deliveries_.find(seq.value);
  if (it == deliveries_.end()) return std::nullopt;
  return it->second;
}

// ---- CursorBatch ----

void CursorBatch::Ack(Seq lo, Seq hi) {
  if (hi <= lo) return;
  FlushDeliveries();
  if (!acks_.empty() && acks_.back().second == lo.value) {
    acks_.back().second = hi.value;  // consecutive acks become one range
  } else {
    acks_.emplace_back(lo.value, hi.value);
  }
  if (acks_.size() >= kMaxBatchFrameItems) FlushAcks();
}

void CursorBatch::SetDelivery(Seq seq, Delivery d) {
  FlushAcks();
  deliveries_.emplace_back(seq.value, d);
  if (deliveries_.size() >= kMaxBatchFrameItems) FlushDeliveries();
}

void CursorBatch::Reset(Seq floor, const std::vector<std::pair<Seq, Seq>>& acked) {
  FlushAcks();
  FlushDeliveries();
  std::string payload;
  PutFixed64(&payload, floor.value);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [lo, hi] : acked) ranges.emplace_back(lo.value, hi.value);
  PutRanges(&payload, ranges);
  AppendFrame(&frames_, FrameType::kCursorReset, payload);
}

void CursorBatch::FlushAcks() {
  if (acks_.empty()) return;
  std::string payload;
  PutRanges(&payload, acks_);
  AppendFrame(&frames_, FrameType::kCursorAck, payload);
  acks_.clear();
}

void CursorBatch::FlushDeliveries() {
  if (deliveries_.empty()) return;
  std::string payload;
  PutDeliveries(&payload, deliveries_);
  AppendFrame(&frames_, FrameType::kCursorDelivery, payload);
  deliveries_.clear();
}

bool ApplyCursorFrame(FrameType type, std::string_view payload, CursorState* state) {
  Decoder d(payload);
  switch (type) {
    case FrameType::kCursorAck: {
      std::vector<std::pair<uint64_t, uint64_t>> ranges;
      if (!GetRanges(&d, &ranges) || !d.empty()) return false;
      for (const auto& [lo, hi] : ranges) state->Ack(Seq(lo), Seq(hi));
      return true;
    }
    case FrameType::kCursorDelivery: {
      std::vector<std::pair<uint64_t, Delivery>> ds;
      if (!GetDeliveries(&d, &ds) || !d.empty()) return false;
      for (const auto& [seq, del] : ds) state->SetDelivery(Seq(seq), del);
      return true;
    }
    case FrameType::kCursorReset: {
      uint64_t floor = 0;
      std::vector<std::pair<uint64_t, uint64_t>> ranges;
      if (!d.U64(&floor) || !GetRanges(&d, &ranges) || !d.empty()) return false;
      std::vector<std::pair<Seq, Seq>> acked;
      for (const auto& [lo, hi] : ranges) acked.emplace_back(Seq(lo), Seq(hi));
      state->Reset(Seq(floor), acked);
      return true;
    }
    default:
      return false;
  }
}

// ---- Cursor ----

Cursor::Cursor(Env* env, std::string dir, CursorOptions options, Flusher* flusher)
    : env_(env), dir_(std::move(dir)), options_(options), flusher_(flusher) {}

Cursor::~Cursor() {
  {
    std::lock_guard lock(pending_mu_);
    closing_ = true;
  }
  flusher_->Schedule(this);
  flusher_->Forget(this);
  flusher_->WaitForCompletions();
  if (wal_) (void)wal_->Close();
}

Result<std::unique_ptr<Cursor>> Cursor::Open(Env* env, std::string dir, CursorOptions options,
                                             Flusher* flusher) {
  std::unique_ptr<Cursor> c(new Cursor(env, std::move(dir), options, flusher));
  Status s = c->Recover();
  if (!s.ok()) return s.WithContext("open cursor " + c->dir_);
  return c;
}

Status Cursor::ReplayWal(const std::string& path, bool is_last) {
  TP_ASSIGN_OR_RETURN(std::string data, env_->ReadFileToString(path));
  size_t pos = 0;
  while (pos < data.size()) {
    Frame f = ParseFrame(data, pos);
    if (IsCursorOpFrame(f) && ApplyCursorFrame(f.type, f.payload, &state_)) {
      ++recovery_.wal_frames_replayed;
      pos += f.size;
      continue;
    }
    // Damage at pos: durable once (a valid frame follows) or a torn tail?
    size_t next = std::string::npos;
    for (size_t p = pos + 1; p + kFrameHeaderSize <= data.size(); ++p) {
      if (IsCursorOpFrame(ParseFrame(data, p))) {
        next = p;
        break;
      }
    }
    if (next == std::string::npos) {
      if (is_last) {
        TP_ASSIGN_OR_RETURN(auto w, env_->OpenAppendable(path));
        TP_RETURN_IF_ERROR(w->Truncate(pos));
        TP_RETURN_IF_ERROR(w->Sync());
        TP_RETURN_IF_ERROR(w->Close());
      }
      recovery_.torn_bytes_truncated += data.size() - pos;
      return Status::Ok();
    }
    std::string line = path + ": bytes [" + std::to_string(pos) + ", " + std::to_string(next) +
                       ") are corrupt (" + FrameStatusName(f.status) + ")";
    if (options_.strict_recovery) return Status::Corruption(line);
    recovery_.corruption.push_back(line);
    pos = next;
  }
  return Status::Ok();
}

Status Cursor::Recover() {
  TP_RETURN_IF_ERROR(env_->CreateDirs(dir_));
  TP_ASSIGN_OR_RETURN(auto names, env_->ListDir(dir_));
  std::vector<uint64_t> checkpoints, wals;
  for (const auto& name : names) {
    uint64_t gen = 0;
    if (ParseGenName(name, kCheckpointPrefix, &gen)) {
      checkpoints.push_back(gen);
    } else if (ParseGenName(name, kWalPrefix, &gen)) {
      wals.push_back(gen);
    } else if (name.ends_with(".tmp")) {
      TP_RETURN_IF_ERROR(env_->RemoveFile(JoinPath(dir_, name)));
    }
  }
  std::sort(checkpoints.rbegin(), checkpoints.rend());
  std::sort(wals.begin(), wals.end());

  uint64_t base_gen = 0;
  bool bad_checkpoint = false;
  for (uint64_t gen : checkpoints) {
    auto data = env_->ReadFileToString(JoinPath(dir_, GenName(kCheckpointPrefix, gen)));
    uint64_t stored_gen = 0;
    CursorState s;
    if (data.ok() && DecodeCheckpoint(*data, &stored_gen, &s) && stored_gen == gen) {
      state_ = std::move(s);
      base_gen = gen;
      break;
    }
    bad_checkpoint = true;
    recovery_.corruption.push_back("checkpoint generation " + std::to_string(gen) +
                                   " is unreadable; using an older one");
  }
  if (bad_checkpoint && options_.strict_recovery) {
    return Status::Corruption(recovery_.corruption.front());
  }

  std::vector<uint64_t> replay;
  for (uint64_t gen : wals) {
    if (gen >= base_gen) replay.push_back(gen);
  }
  for (size_t i = 0; i < replay.size(); ++i) {
    TP_RETURN_IF_ERROR(
        ReplayWal(JoinPath(dir_, GenName(kWalPrefix, replay[i])), i + 1 == replay.size()));
  }
  generation_ = replay.empty() ? base_gen : std::max(base_gen, replay.back());
  // New generations must sort after every file present, unreadable ones included.
  if (!checkpoints.empty()) generation_ = std::max(generation_, checkpoints.front());
  recovery_.generation = generation_;
  const std::string wal_path = JoinPath(dir_, GenName(kWalPrefix, generation_));
  const bool existed = env_->FileExists(wal_path);
  TP_ASSIGN_OR_RETURN(wal_, env_->OpenAppendable(wal_path));
  if (!existed) {
    TP_RETURN_IF_ERROR(wal_->Sync());
    TP_RETURN_IF_ERROR(env_->SyncDir(dir_));
  }
  // Leftovers of an interrupted compaction: fold them into a fresh checkpoint.
  const bool stale_files = bad_checkpoint || replay.size() > 1 || checkpoints.size() > 1 ||
                           (!wals.empty() && wals.front() < base_gen);
  if (stale_files) TP_RETURN_IF_ERROR(Compact());
  return Status::Ok();
}

Status Cursor::Compact() {
  const uint64_t next_gen = generation_ + 1;
  const std::string wal_path = JoinPath(dir_, GenName(kWalPrefix, next_gen));
  TP_ASSIGN_OR_RETURN(auto wal, env_->OpenAppendable(wal_path));
  if (wal->Size() != 0) TP_RETURN_IF_ERROR(wal->Truncate(0));
  TP_RETURN_IF_ERROR(wal->Sync());
  TP_RETURN_IF_ERROR(env_->SyncDir(dir_));
  std::string checkpoint;
  {
    std::lock_guard lock(mu_);
    checkpoint = EncodeCheckpoint(next_gen, state_);
  }
  TP_RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(dir_, GenName(kCheckpointPrefix, next_gen)),
                                           std::as_bytes(std::span(checkpoint))));
  if (wal_) (void)wal_->Close();
  wal_ = std::move(wal);
  {
    std::lock_guard lock(mu_);
    generation_ = next_gen;
  }
  // Everything older is now folded into the new checkpoint.
  TP_ASSIGN_OR_RETURN(auto names, env_->ListDir(dir_));
  for (const auto& name : names) {
    uint64_t gen = 0;
    if ((ParseGenName(name, kCheckpointPrefix, &gen) || ParseGenName(name, kWalPrefix, &gen)) &&
        gen < next_gen) {
      TP_RETURN_IF_ERROR(env_->RemoveFile(JoinPath(dir_, name)));
    }
  }
  return env_->SyncDir(dir_);
}

void Cursor::SyncIfDirty() {
  {
    std::lock_guard lock(pending_mu_);
    sync_requested_ = true;
  }
  flusher_->Schedule(this);
}

void Cursor::CommitAsync(CursorBatch batch, std::function<void(Status)> done, bool durable) {
  batch.FlushAcks();
  batch.FlushDeliveries();
  if (batch.empty()) {
    done(Status::Ok());
    return;
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
      done(Status::Unavailable("cursor " + dir_ + " is closing"));
      return;
    }
    pending_.push_back(Pending{std::move(batch), std::move(done), durable});
  }
  flusher_->Schedule(this);
}

Status Cursor::Commit(CursorBatch batch) {
  std::promise<Status> promise;
  auto future = promise.get_future();
  CommitAsync(std::move(batch), [&promise](Status s) { promise.set_value(std::move(s)); });
  return future.get();
}

void Cursor::CommitPending() {
  std::deque<Pending> batch;
  bool sync_requested = false;
  {
    std::lock_guard lock(pending_mu_);
    batch.swap(pending_);
    sync_requested = sync_requested_ || closing_;
    sync_requested_ = false;
  }
  if (batch.empty()) {
    if (sync_requested && dirty_) {
      Status s = wal_->Sync();
      if (s.ok()) {
        dirty_ = false;
      } else {
        std::lock_guard lock(mu_);
        failed_ = Status::IOError("cursor " + dir_ + " is read-only after a failed fdatasync (" +
                                  s.ToString() + "); restart to recover");
      }
    }
    return;
  }
  bool durable = sync_requested;
  for (const auto& p : batch) durable = durable || p.durable;
  {
    std::lock_guard lock(mu_);
    if (!failed_.ok()) {
      for (auto& p : batch) p.done(failed_);
      return;
    }
  }
  buffer_.clear();
  for (const auto& p : batch) buffer_ += p.batch.frames();
  const uint64_t before = wal_->Size();
  Status s = wal_->Append(std::as_bytes(std::span(buffer_)));
  if (!s.ok()) {
    Status undo = wal_->Truncate(before);
    if (undo.ok()) undo = wal_->Sync();
    if (undo.ok()) {
      for (auto& p : batch) p.done(s.WithContext("cursor " + dir_));
      return;
    }
  }
  if (s.ok() && durable) s = wal_->Sync();
  if (!s.ok()) {
    Status failed;
    {
      std::lock_guard lock(mu_);
      failed_ =
          Status::IOError("cursor " + dir_ + " is read-only after a failed write or fdatasync (" +
                          s.ToString() + "); restart to recover");
      failed = failed_;
    }
    for (auto& p : batch) p.done(failed);
    return;
  }
  {
    std::lock_guard lock(mu_);
    for (const auto& p : batch) {
      const std::string& frames = p.batch.frames();
      for (size_t pos = 0; pos < frames.size();) {
        Frame f = ParseFrame(frames, pos);
        ApplyCursorFrame(f.type, f.payload, &state_);
        pos += f.size;
      }
    }
  }
  dirty_ = !durable;
  flusher_->Complete([batch = std::move(batch)]() mutable {
    for (auto& p : batch) p.done(Status::Ok());
  });
  if (wal_->Size() >= options_.compact_bytes) {
    Status cs = Compact();
    if (!cs.ok()) {
      std::lock_guard lock(mu_);
      failed_ = Status::IOError("cursor " + dir_ + " is read-only: compaction failed (" +
                                cs.ToString() + ")");
    }
  }
}

CursorState Cursor::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

Seq Cursor::floor() const {
  std::lock_guard lock(mu_);
  return state_.floor();
}

Status Cursor::health() const {
  std::lock_guard lock(mu_);
  return failed_;
}

uint64_t Cursor::generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

}  // namespace tidepool::storage
