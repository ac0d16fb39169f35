#include "storage/flusher.h"

#include "common/thread_name.h"

namespace tidepool::storage {

Flusher::Flusher(int threads) {
  if (threads < 1) threads = 1;
  completer_ = std::thread([this] {
    SetCurrentThreadName("log-complete");
    RunCompletions();
  });
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] {
      SetCurrentThreadName("log-flush");
      Run();
    });
  }
}

Flusher::~Flusher() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
  {
    std::lock_guard lock(completions_mu_);
    completions_stopping_ = true;
  }
  completions_cv_.notify_all();
  completer_.join();
}

void Flusher::Complete(std::function<void()> fn) {
  {
    std::lock_guard lock(completions_mu_);
    completions_.push_back(std::move(fn));
  }
  completions_cv_.notify_one();
}

void Flusher::WaitForCompletions() {
  std::unique_lock lock(completions_mu_);
  completions_idle_cv_.wait(lock, [&] { return completions_.empty() && !completing_; });
}

void Flusher::RunCompletions() {
  std::unique_lock lock(completions_mu_);
  for (;;) {
    completions_cv_.wait(lock, [&] { return completions_stopping_ || !completions_.empty(); });
    if (completions_.empty()) return;  // stopping, and everything has run
    // Take the whole queue: one lock round trip for many completions.
    std::deque<std::function<void()>> batch;
    batch.swap(completions_);
    completing_ = true;
    lock.unlock();
    for (auto& fn : batch) fn();
    lock.lock();
    completing_ = false;
    if (completions_.empty()) completions_idle_cv_.notify_all();
  }
}

void Flusher::Schedule(Committable* c) {
  {
    std::lock_guard lock(mu_);
    auto [it, inserted] = states_.try_emplace(c, State::kQueued);
    if (!inserted) {
      if (it->second == State::kRunning) it->second = State::kRunningRequeue;
      return;
    }
    ready_.push_back(c);
  }
  work_cv_.notify_one();
}

void Flusher::Forget(Committable* c) {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return !states_.contains(c); });
}

void Flusher::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
    if (ready_.empty()) return;  // stopping, and nothing left to commit
    Committable* c = ready_.front();
    ready_.pop_front();
    states_[c] = State::kRunning;
    lock.unlock();
    c->CommitPending();
    lock.lock();
    auto it = states_.find(c);
    if (it->second == State::kRunningRequeue) {
      it->second = State::kQueued;
      ready_.push_back(c);
    } else {
      states_.erase(it);
      idle_cv_.notify_all();
    }
  }
}

}  // namespace tidepool::storage
