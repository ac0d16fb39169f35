// Credentials for Google Cloud Pub/Sub: OAuth2 access tokens from the metadata server (Cloud
// Run, GKE, Compute Engine) or from a service-account key file (the JWT bearer grant of RFC
// 7523), cached and refreshed before they expire, sent on every gRPC call over TLS.
//
// Written here rather than taken from gRPC's GoogleDefaultCredentials because gRPC 1.51 reaches
// the metadata server only at its fixed address (tests cannot stand in for it, and
// GCE_METADATA_HOST, which Google's client libraries honour, is ignored) and signs its own JWTs
// instead of exchanging them at the key's token_uri.
//
// Thread-safety: TokenCache and the credentials may be used from any thread.
#pragma once

#include <grpcpp/security/credentials.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"

namespace tidepool::pubsub {

inline constexpr char kPubsubScope[] = "https://www.googleapis.com/auth/pubsub";

struct AccessToken {
  std::string value;
  std::chrono::system_clock::time_point expiry;
};

// Fetches a fresh token (one network round trip).
using TokenFetcher = std::function<Result<AccessToken>()>;

// From the metadata server at `host` ("HOST[:PORT]"; GCE_METADATA_HOST, else
// metadata.google.internal): GET /computeMetadata/v1/instance/service-accounts/default/token
// with "Metadata-Flavor: Google".
TokenFetcher MetadataServerTokens(std::string host);

// From a service-account key file (JSON: client_email, private_key, private_key_id, token_uri):
// an RS256-signed JWT for `scope`, exchanged at token_uri (HTTPS; `ca_file` replaces the
// system's roots, for tests). Errors name the file and the missing or bad field.
Result<TokenFetcher> ServiceAccountTokens(const std::string& key_file, std::string scope,
                                          std::string ca_file = "");

// Application Default Credentials: the key file named by GOOGLE_APPLICATION_CREDENTIALS, else
// the metadata server.
Result<TokenFetcher> DefaultTokens(std::string scope, std::string ca_file = "");

// The current token, fetched again when less than a quarter of its lifetime (at most 5
// minutes) remains, so that calls never carry one about to expire. A failed refresh keeps
// serving the old token while it is still valid.
class TokenCache {
 public:
  explicit TokenCache(TokenFetcher fetch) : fetch_(std::move(fetch)) {}
  Result<std::string> Get();
  int fetches() const;

 private:
  TokenFetcher fetch_;
  mutable std::mutex mu_;
  AccessToken token_;
  std::chrono::system_clock::time_point refresh_at_{};
  int fetches_ = 0;
};

// TLS (roots: the system's, or the PEM file `ca_file`) with "authorization: Bearer TOKEN" from
// `tokens` on every call.
Result<std::shared_ptr<grpc::ChannelCredentials>> TokenChannelCredentials(
    std::shared_ptr<TokenCache> tokens, const std::string& ca_file = "");

// Base64url without padding (JWT segments).
std::string Base64Url(std::string_view bytes);

}  // namespace tidepool::pubsub
