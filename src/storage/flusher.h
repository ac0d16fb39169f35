// Flusher: the group-commit threads of one data directory (DESIGN.md, "Runtime model").
//
// Logs and cursors queue their appends and Schedule() themselves; a flusher thread then calls
// CommitPending(), which acts as the group leader: it merges what is queued, writes it once,
// fsyncs once and completes the appenders. An object is never committed by two threads at
// once, so CommitPending() needs no lock around the file it writes.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace tidepool::storage {

class Committable {
 public:
  virtual ~Committable() = default;
  // Runs on a flusher thread; never concurrently for the same object. Should commit one group
  // and Schedule() again if more is pending, so that busy logs take turns.
  virtual void CommitPending() = 0;
};

class Flusher {
 public:
  explicit Flusher(int threads = 1);
  ~Flusher();
  Flusher(const Flusher&) = delete;
  Flusher& operator=(const Flusher&) = delete;

  // Asks for c->CommitPending() to run soon. Calls made while c is queued are merged; a call
  // made while c is being committed makes it run once more afterwards.
  void Schedule(Committable* c);

  // Waits until c is neither queued nor running and forgets it.
  // REQUIRES: nothing schedules c concurrently (its owner is shutting it down).
  void Forget(Committable* c);

  // Runs `fn` on the completion thread, in the order of the calls. Committables hand their
  // appenders' completions here, so that waking them overlaps the next group's write and
  // fsync instead of delaying it.
  void Complete(std::function<void()> fn);
  // A completion must not block on another commit (say, a blocking Log::Append): that
  // commit's completion would queue behind it.
  // Waits until every completion handed over so far has run.
  // REQUIRES: not called from a completion.
  void WaitForCompletions();

 private:
  enum class State { kQueued, kRunning, kRunningRequeue };
  void Run();
  void RunCompletions();

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<Committable*> ready_;
  std::unordered_map<Committable*, State> states_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;

  std::mutex completions_mu_;
  std::condition_variable completions_cv_;
  std::condition_variable completions_idle_cv_;
  std::deque<std::function<void()>> completions_;
  bool completing_ = false;
  bool completions_stopping_ = false;
  std::thread completer_;
};

}  // namespace tidepool::storage
