#include "pubsub/google_auth.h"

#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "admin/http_client.h"

namespace tidepool::pubsub {

namespace json = boost::json;
using SystemClock = std::chrono::system_clock;

namespace {

constexpr auto kMaxRefreshMargin = std::chrono::minutes(5);
constexpr int64_t kAssertionSeconds = 3600;  // the longest the JWT bearer grant accepts
constexpr char kDefaultMetadataHost[] = "metadata.google.internal";

// {"access_token": "...", "expires_in": N} from a token endpoint's reply.
Result<AccessToken> ParseTokenReply(const admin::HttpReply& reply, const std::string& from) {
  if (reply.status != 200) {
    return Status::Unauthenticated("token request to " + from + " answered HTTP " +
                                   std::to_string(reply.status) + ": " + reply.body.substr(0, 300));
  }
  boost::system::error_code ec;
  const json::value v = json::parse(reply.body, ec);
  const json::object* o = ec ? nullptr : v.if_object();
  const json::value* token = o ? o->if_contains("access_token") : nullptr;
  const json::value* expires = o ? o->if_contains("expires_in") : nullptr;
  if (token == nullptr || !token->is_string() || token->as_string().empty() || expires == nullptr ||
      !expires->is_number()) {
    return Status::Unauthenticated("token reply from " + from +
                                   " has no access_token and expires_in");
  }
  const auto seconds = static_cast<int64_t>(expires->to_number<double>());
  return AccessToken{.value = std::string(token->as_string()),
                     .expiry = SystemClock::now() + std::chrono::seconds(seconds)};
}

struct Url {
  bool tls = false;
  std::string endpoint;  // HOST:PORT
  std::string target;    // /path
};

Result<Url> ParseUrl(const std::string& text) {
  Url url;
  std::string rest;
  if (text.starts_with("https://")) {
    url.tls = true;
    rest = text.substr(8);
  } else if (text.starts_with("http://")) {
    rest = text.substr(7);
  } else {
    return Status::InvalidArgument("\"" + text + "\" is not an http(s) URL");
  }
  const size_t slash = rest.find('/');
  url.endpoint = rest.substr(0, slash);
  url.target = slash == std::string::npos ? "/" : rest.substr(slash);
  if (url.endpoint.empty()) return Status::InvalidArgument("\"" + text + "\" has no host");
  if (url.endpoint.find(':') == std::string::npos) url.endpoint += url.tls ? ":443" : ":80";
  return url;
}

std::string FormEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  return out;
}

// RS256: an RSA PKCS#1 v1.5 signature over SHA-256.
Result<std::string> SignRs256(const std::string& pem_key, std::string_view input) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem_key.data(), static_cast<int>(pem_key.size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
  if (!key) return Status::InvalidArgument("private_key is not a PEM private key");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  size_t length = 0;
  if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &length,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
    return Status::Internal("cannot sign with the service account's key");
  }
  std::string signature(length, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
    return Status::Internal("cannot sign with the service account's key");
  }
  signature.resize(length);
  return signature;
}

class TokenPlugin : public grpc::MetadataCredentialsPlugin {
 public:
  explicit TokenPlugin(std::shared_ptr<TokenCache> tokens) : tokens_(std::move(tokens)) {}
  // A fetch may take a network round trip: gRPC runs blocking plugins off its event loop.
  bool IsBlocking() const override { return true; }
  grpc::Status GetMetadata(grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
                           std::multimap<grpc::string, grpc::string>* metadata) override {
    auto token = tokens_->Get();
    if (!token.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "no access token: " + token.status().message());
    }
    metadata->emplace("authorization", "Bearer " + *token);
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<TokenCache> tokens_;
};

}  // namespace

std::string Base64Url(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return out;
}

TokenFetcher MetadataServerTokens(std::string host) {
  if (host.find(':') == std::string::npos) host += ":80";
  return [host]() -> Result<AccessToken> {
    admin::HttpCall call{.method = "GET",
                         .endpoint = host,
                         .target = "/computeMetadata/v1/instance/service-accounts/default/token",
                         .headers = {{"Metadata-Flavor", "Google"}},
                         .timeout = std::chrono::seconds(5)};
    auto reply = admin::HttpFetch(call);
    if (!reply.ok()) {
      return Status::Unavailable("metadata server " + host + ": " + reply.status().message());
    }
    return ParseTokenReply(*reply, "the metadata server " + host);
  };
}

Result<TokenFetcher> ServiceAccountTokens(const std::string& key_file, std::string scope,
                                          std::string ca_file) {
  std::ifstream in(key_file);
  if (!in) return Status::NotFound("cannot read the service account key file " + key_file);
  std::stringstream text;
  text << in.rdbuf();
  boost::system::error_code ec;
  const json::value v = json::parse(text.str(), ec);
  if (ec || !v.is_object()) {
    return Status::InvalidArgument(key_file + ": not a JSON service account key");
  }
  const json::object& o = v.as_object();
  auto field = [&](const char* name) -> Result<std::string> {
    const json::value* f = o.if_contains(name);
    if (f == nullptr || !f->is_string() || f->as_string().empty()) {
      return Status::InvalidArgument(key_file + ": \"" + name + "\" is missing");
    }
    return std::string(f->as_string());
  };
  if (auto type = field("type"); !type.ok() || *type != "service_account") {
    return Status::InvalidArgument(key_file + ": \"type\" is not \"service_account\"");
  }
  TP_ASSIGN_OR_RETURN(std::string email, field("client_email"));
  TP_ASSIGN_OR_RETURN(std::string private_key, field("private_key"));
  TP_ASSIGN_OR_RETURN(std::string token_uri, field("token_uri"));
  auto key_id_field = field("private_key_id");
  const std::string key_id = key_id_field.ok() ? *key_id_field : "";
  auto url = ParseUrl(token_uri);
  if (!url.ok())
    return Status::InvalidArgument(key_file + ": token_uri: " + url.status().message());
  // Fail now on a key that cannot sign, rather than at the first call.
  TP_RETURN_IF_ERROR(SignRs256(private_key, "probe").status());
  return TokenFetcher([email, private_key, key_id, scope, ca_file, token_uri,
                       url = *url]() -> Result<AccessToken> {
    const int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(SystemClock::now().time_since_epoch())
            .count();
    json::object header{{"alg", "RS256"}, {"typ", "JWT"}};
    if (!key_id.empty()) header["kid"] = key_id;
    const json::object claims{{"iss", email},
                              {"scope", scope},
                              {"aud", token_uri},
                              {"iat", now},
                              {"exp", now + kAssertionSeconds}};
    const std::string signing_input =
        Base64Url(json::serialize(header)) + "." + Base64Url(json::serialize(claims));
    TP_ASSIGN_OR_RETURN(std::string signature, SignRs256(private_key, signing_input));
    const std::string assertion = signing_input + "." + Base64Url(signature);
    admin::HttpCall call{
        .method = "POST",
        .endpoint = url.endpoint,
        .target = url.target,
        .body = "grant_type=" + FormEncode("urn:ietf:params:oauth:grant-type:jwt-bearer") +
                "&assertion=" + FormEncode(assertion),
        .content_type = "application/x-www-form-urlencoded",
        .timeout = std::chrono::seconds(10),
        .tls = url.tls,
        .ca_file = ca_file};
    auto reply = admin::HttpFetch(call);
    if (!reply.ok()) {
      return Status::Unavailable("token endpoint " + token_uri + ": " + reply.status().message());
    }
    return ParseTokenReply(*reply, token_uri);
  });
}

Result<TokenFetcher> DefaultTokens(std::string scope, std::string ca_file) {
  if (const char* file = std::getenv("GOOGLE_APPLICATION_CREDENTIALS"); file && *file) {
    return ServiceAccountTokens(file, std::move(scope), std::move(ca_file));
  }
  const char* host = std::getenv("GCE_METADATA_HOST");
  return MetadataServerTokens(host != nullptr && *host ? host : kDefaultMetadataHost);
}

Result<std::string> TokenCache::Get() {
  std::lock_guard lock(mu_);
  const auto now = SystemClock::now();
  if (!token_.value.empty() && now < refresh_at_) return token_.value;
  auto fresh = fetch_();
  ++fetches_;
  if (!fresh.ok()) {
    if (!token_.value.empty() && now < token_.expiry) return token_.value;
    return fresh.status();
  }
  token_ = std::move(fresh).value();
  const auto lifetime = token_.expiry - now;
  refresh_at_ = token_.expiry - std::min<SystemClock::duration>(kMaxRefreshMargin, lifetime / 4);
  return token_.value;
}

int TokenCache::fetches() const {
  std::lock_guard lock(mu_);
  return fetches_;
}

Result<std::shared_ptr<grpc::ChannelCredentials>> TokenChannelCredentials(
    std::shared_ptr<TokenCache> tokens, const std::string& ca_file) {
  grpc::SslCredentialsOptions tls;
  if (!ca_file.empty()) {
    std::ifstream in(ca_file);
    if (!in) return Status::NotFound("cannot read the CA file " + ca_file);
    std::stringstream pem;
    pem << in.rdbuf();
    tls.pem_root_certs = pem.str();
  }
  auto call = grpc::MetadataCredentialsFromPlugin(std::make_unique<TokenPlugin>(std::move(tokens)));
  return grpc::CompositeChannelCredentials(grpc::SslCredentials(tls), call);
}

}  // namespace tidepool::pubsub
