// The `pubsub` queue backend as it reaches Google Cloud Pub/Sub: TLS to the endpoint and OAuth2
// access tokens, from a service-account key file (JWT bearer grant at the key's token_uri) or
// from the metadata server, refreshed before they expire. The real service is out of reach
// here, so a tidepool broker stands in for it, serving TLS and accepting only tokens that the
// test's token endpoint issued and that have not expired; the token endpoint verifies the
// JWT's RS256 signature with the service account's public key and its claims.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "admin/admin_server.h"
#include "broker/broker.h"
#include "pubsub/google_auth.h"
#include "pubsub/server.h"
#include "queue/queue.h"
#include "storage/test_util.h"

namespace tidepool {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
using SystemClock = std::chrono::system_clock;

constexpr char kEmail[] = "worker@tidepool-test.iam.gserviceaccount.com";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Base64UrlDecode(std::string in) {
  for (char& c : in) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  size_t padding = 0;
  while (in.size() % 4 != 0) {
    in += '=';
    ++padding;
  }
  std::string out(in.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  if (n < 0) return "";
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

// Tokens the "Google" side issued, with their expiry: what the broker accepts.
class TokenRegistry {
 public:
  std::string Issue(const std::string& prefix, std::chrono::seconds lifetime) {
    std::lock_guard lock(mu_);
    const std::string token = prefix + "-" + std::to_string(++issued_);
    expiry_[token] = SystemClock::now() + lifetime;
    return token;
  }
  bool Valid(const std::string& token) {
    std::lock_guard lock(mu_);
    auto it = expiry_.find(token);
    return it != expiry_.end() && SystemClock::now() < it->second;
  }
  int issued() {
    std::lock_guard lock(mu_);
    return issued_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, SystemClock::time_point> expiry_;
  int issued_ = 0;
};

// A one-request-per-connection HTTP(S) server on its own thread, for the token endpoint and
// the metadata server.
class TestHttpServer {
 public:
  using Handler =
      std::function<http::response<http::string_body>(const http::request<http::string_body>&)>;

  TestHttpServer(Handler handler, asio::ssl::context* tls)
      : handler_(std::move(handler)),
        tls_(tls),
        acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    thread_ = std::thread([this] { Serve(); });
  }
  ~TestHttpServer() {
    stopping_ = true;
    beast::error_code ec;
    tcp::socket poke(io_);
    poke.connect(acceptor_.local_endpoint(), ec);  // wakes the blocking accept
    thread_.join();
  }
  int port() const { return acceptor_.local_endpoint().port(); }

 private:
  template <typename Stream>
  void Exchange(Stream& stream) {
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    beast::error_code ec;
    http::read(stream, buffer, request, ec);
    if (ec) return;
    auto response = handler_(request);
    response.keep_alive(false);
    response.prepare_payload();
    http::write(stream, response, ec);
  }

  void Serve() {
    while (true) {
      tcp::socket socket(io_);
      beast::error_code ec;
      acceptor_.accept(socket, ec);
      if (stopping_) return;
      if (ec) continue;
      if (tls_ == nullptr) {
        Exchange(socket);
        continue;
      }
      beast::ssl_stream<tcp::socket> stream(std::move(socket), *tls_);
      stream.handshake(asio::ssl::stream_base::server, ec);
      if (ec) continue;
      Exchange(stream);
      stream.shutdown(ec);
    }
  }

  Handler handler_;
  asio::ssl::context* tls_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

http::response<http::string_body> JsonReply(http::status status, const std::string& body) {
  http::response<http::string_body> r{status, 11};
  r.set(http::field::content_type, "application/json");
  r.body() = body;
  return r;
}

class GoogleAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
    unsetenv("GCE_METADATA_HOST");
    dir_ = std::filesystem::temp_directory_path() /
           ("tidepool_google_auth_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const std::string d = dir_.string();
    const std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost -keyout " +
        d + "/tls.key -out " + d + "/tls.crt >/dev/null 2>&1 && openssl genrsa -out " + d +
        "/sa.pem 2048 >/dev/null 2>&1 && openssl rsa -in " + d + "/sa.pem -pubout -out " + d +
        "/sa.pub >/dev/null 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << "the openssl CLI makes the test's keys";
    tls_.use_certificate_chain_file(d + "/tls.crt");
    tls_.use_private_key_file(d + "/tls.key", asio::ssl::context::pem);

    broker::BrokerOptions bo;
    bo.data_dir = data_.sub("broker");
    auto b = broker::Broker::Open(bo);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    broker_ = std::move(b).value();
    pubsub::ServerOptions so;
    so.listen = "127.0.0.1:0";
    so.tls_cert_file = d + "/tls.crt";
    so.tls_key_file = d + "/tls.key";
    so.authorize = [this](const std::string& token) { return tokens_.Valid(token); };
    auto server = pubsub::PubsubServer::Start(broker_.get(), so);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  void TearDown() override {
    unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
    unsetenv("GCE_METADATA_HOST");
    if (server_) server_->Shutdown(1'000'000);
    std::filesystem::remove_all(dir_);
  }

  // The OAuth2 token endpoint of the JWT bearer grant (RFC 7523).
  void StartTokenEndpoint(std::chrono::seconds lifetime) {
    token_endpoint_ = std::make_unique<TestHttpServer>(
        [this, lifetime](const http::request<http::string_body>& request) {
          auto problem = CheckGrant(request);
          if (!problem.empty()) {
            ++bad_grants_;
            ADD_FAILURE() << "token request refused: " << problem;
            return JsonReply(http::status::bad_request,
                             R"({"error":"invalid_grant","error_description":")" + problem + "\"}");
          }
          const std::string token = tokens_.Issue("sa", lifetime);
          return JsonReply(http::status::ok,
                           json::serialize(json::object{{"access_token", token},
                                                        {"expires_in", lifetime.count()},
                                                        {"token_type", "Bearer"}}));
        },
        &tls_);
  }

  std::string TokenUri() const {
    return "https://localhost:" + std::to_string(token_endpoint_->port()) + "/token";
  }

  // What the real endpoint checks: the grant type, the JWT's signature and claims.
  std::string CheckGrant(const http::request<http::string_body>& request) {
    if (request.method() != http::verb::post || request.target() != "/token") return "route";
    if (request[http::field::content_type] != "application/x-www-form-urlencoded") return "type";
    auto form = admin::ParseQuery(request.body());  // a form body is a query string
    if (form["grant_type"] != "urn:ietf:params:oauth:grant-type:jwt-bearer") return "grant_type";
    const std::string& jwt = form["assertion"];
    const size_t first = jwt.find('.');
    const size_t second = jwt.find('.', first + 1);
    if (first == std::string::npos || second == std::string::npos) return "not a JWT";
    const json::value header = json::parse(Base64UrlDecode(jwt.substr(0, first)));
    const json::value claims =
        json::parse(Base64UrlDecode(jwt.substr(first + 1, second - first - 1)));
    const std::string signature = Base64UrlDecode(jwt.substr(second + 1));
    if (header.at("alg") != "RS256" || header.at("kid") != "key-1") return "header";
    if (claims.at("iss") != kEmail) return "iss";
    if (claims.at("aud") != json::value(TokenUri())) return "aud";
    if (claims.at("scope") != pubsub::kPubsubScope) return "scope";
    const int64_t iat = claims.at("iat").to_number<int64_t>();
    const int64_t exp = claims.at("exp").to_number<int64_t>();
    const int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(SystemClock::now().time_since_epoch())
            .count();
    if (exp - iat > 3600 || iat > now + 5 || exp < now) return "iat/exp";
    const std::string pem = ReadFile((dir_ / "sa.pub").string());
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    const std::string input = jwt.substr(0, second);
    if (!key || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
        EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                         signature.size(), reinterpret_cast<const unsigned char*>(input.data()),
                         input.size()) != 1) {
      return "signature";
    }
    return "";
  }

  std::string WriteKeyFile(const std::string& token_uri, bool with_private_key = true) {
    json::object key{{"type", "service_account"},
                     {"project_id", "tidepool-test"},
                     {"private_key_id", "key-1"},
                     {"client_email", kEmail},
                     {"token_uri", token_uri}};
    if (with_private_key) key["private_key"] = ReadFile((dir_ / "sa.pem").string());
    const std::string path = (dir_ / "key.json").string();
    std::ofstream(path) << json::serialize(key);
    return path;
  }

  Result<std::unique_ptr<queue::Queue>> Open(std::string auth = "google",
                                             std::chrono::milliseconds timeout = 10s) {
    return queue::OpenQueue({.backend = "pubsub",
                             .project = "tidepool-test",
                             .endpoint = "localhost:" + std::to_string(server_->port()),
                             .call_timeout = timeout,
                             .auth = std::move(auth),
                             .tls_ca_file = (dir_ / "tls.crt").string()});
  }

  // Publishes one message and pulls it back: every call carried an accepted token.
  void RoundTrip(queue::Queue& q, const std::string& text) {
    ASSERT_TRUE(q.EnsureTopic("orders").ok());
    ASSERT_TRUE(q.EnsureSubscription({.name = "orders-workers", .topic = "orders"}).ok());
    std::promise<Result<std::vector<std::string>>> published;
    q.Publish("orders", {broker::Message{.data = text}},
              [&](Result<std::vector<std::string>> ids) { published.set_value(std::move(ids)); });
    auto ids = published.get_future().get();
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    std::promise<Result<std::vector<queue::Delivery>>> pulled;
    q.Pull("orders-workers", 10, 5s,
           [&](Result<std::vector<queue::Delivery>> d) { pulled.set_value(std::move(d)); });
    auto deliveries = pulled.get_future().get();
    ASSERT_TRUE(deliveries.ok()) << deliveries.status().ToString();
    ASSERT_EQ(deliveries->size(), 1u);
    EXPECT_EQ((*deliveries)[0].message.data, text);
    std::promise<queue::AckOutcome> acked;
    q.Ack("orders-workers", {(*deliveries)[0].ack_id},
          [&](queue::AckOutcome o) { acked.set_value(std::move(o)); });
    EXPECT_TRUE(acked.get_future().get().status.ok());
  }

  std::filesystem::path dir_;
  storage::testing::TempDir data_;
  asio::ssl::context tls_{asio::ssl::context::tls_server};
  TokenRegistry tokens_;
  std::atomic<int> bad_grants_{0};
  std::unique_ptr<TestHttpServer> token_endpoint_;
  std::unique_ptr<broker::Broker> broker_;
  std::unique_ptr<pubsub::PubsubServer> server_;
};

TEST_F(GoogleAuthTest, AKeyFileGetsTokensByJwtBearerGrantAndRefreshesThemBeforeExpiry) {
  StartTokenEndpoint(4s);  // refreshed when a quarter of the lifetime remains: after 3 s
  setenv("GOOGLE_APPLICATION_CREDENTIALS", WriteKeyFile(TokenUri()).c_str(), 1);
  auto q = Open();
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  RoundTrip(**q, "first");
  EXPECT_EQ(tokens_.issued(), 1) << "one token serves many calls";
  std::this_thread::sleep_for(3500ms);  // past the refresh point, before the expiry
  RoundTrip(**q, "second");
  EXPECT_EQ(tokens_.issued(), 2) << "the token was not refreshed before it expired";
  std::this_thread::sleep_for(4500ms);  // past the second token's expiry
  RoundTrip(**q, "third");
  EXPECT_EQ(tokens_.issued(), 3);
  EXPECT_EQ(bad_grants_.load(), 0);
}

TEST_F(GoogleAuthTest, TheMetadataServerGivesTokensToCallersThatSayMetadataFlavorGoogle) {
  std::atomic<int> without_header{0};
  TestHttpServer metadata(
      [&](const http::request<http::string_body>& request) {
        if (request["Metadata-Flavor"] != "Google") {
          ++without_header;
          return JsonReply(http::status::forbidden, R"({"error":"missing Metadata-Flavor"})");
        }
        if (request.target() != "/computeMetadata/v1/instance/service-accounts/default/token") {
          return JsonReply(http::status::not_found, "{}");
        }
        return JsonReply(http::status::ok,
                         json::serialize(json::object{{"access_token", tokens_.Issue("md", 3600s)},
                                                      {"expires_in", 3599},
                                                      {"token_type", "Bearer"}}));
      },
      nullptr);
  setenv("GCE_METADATA_HOST", ("127.0.0.1:" + std::to_string(metadata.port())).c_str(), 1);
  auto q = Open();
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  RoundTrip(**q, "from Cloud Run");
  EXPECT_EQ(tokens_.issued(), 1);
  EXPECT_EQ(without_header.load(), 0);
}

TEST_F(GoogleAuthTest, CallsWithoutTlsOrWithAnUnacceptedTokenFailClearly) {
  // Plaintext to a TLS endpoint: nothing connects.
  auto plain = Open("", 2s);
  ASSERT_TRUE(plain.ok());
  Status s = (*plain)->EnsureTopic("orders");
  EXPECT_FALSE(s.ok());

  // A token the broker does not accept: UNAUTHENTICATED, saying so.
  TestHttpServer metadata(
      [](const http::request<http::string_body>&) {
        return JsonReply(http::status::ok, R"({"access_token":"forged","expires_in":3600})");
      },
      nullptr);
  setenv("GCE_METADATA_HOST", ("127.0.0.1:" + std::to_string(metadata.port())).c_str(), 1);
  auto forged = Open();
  ASSERT_TRUE(forged.ok());
  s = (*forged)->EnsureTopic("orders");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("not accepted"), std::string::npos) << s.ToString();

  // No token at all (the metadata server is gone): the call fails naming the reason.
  setenv("GCE_METADATA_HOST", "127.0.0.1:1", 1);
  auto none = Open();
  ASSERT_TRUE(none.ok());
  s = (*none)->EnsureTopic("orders");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("metadata server"), std::string::npos) << s.ToString();
}

TEST_F(GoogleAuthTest, ABadKeyFileIsRefusedAtOpenNamingTheProblem) {
  setenv("GOOGLE_APPLICATION_CREDENTIALS", WriteKeyFile("https://localhost:1/token", false).c_str(),
         1);
  auto q = Open();
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("\"private_key\" is missing"), std::string::npos)
      << q.status().ToString();
  setenv("GOOGLE_APPLICATION_CREDENTIALS", (dir_ / "absent.json").string().c_str(), 1);
  q = Open();
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(Open("kerberos").ok());
}

TEST(Base64UrlTest, EncodesWithoutPaddingInTheUrlAlphabet) {
  EXPECT_EQ(pubsub::Base64Url(""), "");
  EXPECT_EQ(pubsub::Base64Url("f"), "Zg");
  EXPECT_EQ(pubsub::Base64Url("fo"), "Zm8");
  EXPECT_EQ(pubsub::Base64Url("foo"), "Zm9v");
  EXPECT_EQ(pubsub::Base64Url("\xfb\xff"), "-_8");
}

}  // namespace
}  // namespace tidepool
