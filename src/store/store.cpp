#include "store/store.h"

#include <algorithm>
#include <cctype>

#include "store/engine.h"

namespace tidepool::store {

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kError:
      return "error";
  }
  return "unknown";
}

Result<PostedMessage> Store::PostUserMessage(const std::string& app, const StoredMessage& message,
                                             const std::string& idempotency_key,
                                             int history_limit) {
  TP_RETURN_IF_ERROR(internal::CheckLimit(history_limit));
  TP_ASSIGN_OR_RETURN(const std::optional<Conversation> conversation,
                      GetConversation(message.conversation_id));
  if (!conversation || conversation->app != app) {
    return Status::NotFound("store: no conversation " + message.conversation_id + " in app " + app);
  }
  PostedMessage posted;
  TP_ASSIGN_OR_RETURN(posted.added, AddUserMessage(message, idempotency_key));
  TP_ASSIGN_OR_RETURN(posted.history, History(message.conversation_id, history_limit));
  return posted;
}

void Store::PostUserMessageAsync(const std::string& app, const StoredMessage& message,
                                 const std::string& idempotency_key, int history_limit,
                                 PostCallbacks callbacks) {
  Result<PostedMessage> posted = PostUserMessage(app, message, idempotency_key, history_limit);
  if (!posted.ok()) {
    if (callbacks.done) callbacks.done(posted.status());
    return;
  }
  AddResult added = posted->added;
  if (callbacks.written) callbacks.written(std::move(posted).value());
  if (callbacks.done) callbacks.done(std::move(added));
}

void Store::AddReplyAsync(const StoredMessage& reply, std::function<void(Result<bool>)> done) {
  Result<bool> stored = AddReply(reply);
  if (done) done(std::move(stored));
}

Status Store::MarkPublished(const std::string& message_id) {
  TP_ASSIGN_OR_RETURN(const int64_t marked, MarkAllPublished({message_id}));
  if (marked == 0) return Status::NotFound("store: no user message " + message_id);
  return Status::Ok();
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& url) {
  constexpr std::string_view kSqlite = "sqlite:";
  if (url.starts_with(kSqlite)) {
    const std::string path = url.substr(kSqlite.size());
    if (path.empty()) return Status::InvalidArgument("store: sqlite: URL without a path");
    return OpenSqliteStore(path);
  }
  if (url.starts_with("postgresql://") || url.starts_with("postgres://")) {
    PostgresOptions options;
    options.conninfo = url;
    return OpenPostgresStore(options);
  }
  // The URL itself is not repeated: it may hold a password. Its scheme is enough to act on.
  std::string scheme = url.substr(0, url.find(':'));
  const bool plain_scheme = !scheme.empty() && scheme.size() < 32 &&
                            std::all_of(scheme.begin(), scheme.end(), [](unsigned char c) {
                              return std::isalnum(c) || c == '+' || c == '-' || c == '.';
                            });
  if (!plain_scheme || scheme.size() == url.size()) scheme = "(none)";
  return Status::InvalidArgument("store: unknown store URL scheme " + scheme +
                                 ": use sqlite:PATH or postgresql://...");
}

}  // namespace tidepool::store
