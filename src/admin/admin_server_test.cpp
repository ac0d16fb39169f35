#include "admin/admin_server.h"

#include <gtest/gtest.h>

#include "admin/http_client.h"

namespace tidepool::admin {
namespace {

std::string Endpoint(const AdminServer& server) {
  return "127.0.0.1:" + std::to_string(server.port());
}

TEST(AdminServerTest, ExactRoutesServeGetOnly) {
  auto server = AdminServer::Start("127.0.0.1:0", {{"/healthz", [] {
                                                      return Response{200, "text/plain", "ok\n"};
                                                    }}});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto get = HttpFetch({.endpoint = Endpoint(**server), .target = "/healthz"});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->body, "ok\n");
  auto post = HttpFetch({.method = "POST", .endpoint = Endpoint(**server), .target = "/healthz"});
  ASSERT_TRUE(post.ok());
  EXPECT_EQ(post->status, 405);
  auto missing = HttpFetch({.endpoint = Endpoint(**server), .target = "/nope"});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  EXPECT_NE(missing->body.find("/nope"), std::string::npos) << missing->body;
}

TEST(AdminServerTest, PrefixRoutesGetMethodQueryAndBody) {
  Request seen;
  AdminOptions options;
  options.listen = "127.0.0.1:0";
  options.prefix_routes["/v1/pools"] = [&seen](const Request& r) {
    seen = r;
    return Response{201, "application/json", "{}"};
  };
  options.prefix_routes["/v1/pools/special"] = [](const Request&) {
    return Response{202, "application/json", "{}"};
  };
  auto server = AdminServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto reply = HttpFetch({.method = "POST",
                          .endpoint = Endpoint(**server),
                          .target = "/v1/pools/echo:scale?lines=5&name=a%20b+c",
                          .body = "{\"instances\":3}",
                          .content_type = "application/json"});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->status, 201);
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.path, "/v1/pools/echo:scale");
  EXPECT_EQ(seen.query["lines"], "5");
  EXPECT_EQ(seen.query["name"], "a b c");
  EXPECT_EQ(seen.body, "{\"instances\":3}");
  EXPECT_EQ(seen.content_type, "application/json");
  auto longest = HttpFetch({.endpoint = Endpoint(**server), .target = "/v1/pools/special/x"});
  ASSERT_TRUE(longest.ok());
  EXPECT_EQ(longest->status, 202);
}

TEST(AdminServerTest, BearerTokenIsRequiredWhenSet) {
  AdminOptions options;
  options.listen = "127.0.0.1:0";
  options.bearer_token = "s3cret";
  options.routes["/healthz"] = [] { return Response{200, "text/plain", "ok\n"}; };
  options.routes["/v1/backlog"] = [] { return Response{200, "application/json", "{}"}; };
  auto server = AdminServer::Start(options);
  ASSERT_TRUE(server.ok());
  auto health = HttpFetch({.endpoint = Endpoint(**server), .target = "/healthz"});
  EXPECT_EQ(health->status, 200) << "health checks need no token";
  auto none = HttpFetch({.endpoint = Endpoint(**server), .target = "/v1/backlog"});
  EXPECT_EQ(none->status, 401);
  auto wrong =
      HttpFetch({.endpoint = Endpoint(**server), .target = "/v1/backlog", .bearer_token = "s3cre"});
  EXPECT_EQ(wrong->status, 401);
  auto right = HttpFetch(
      {.endpoint = Endpoint(**server), .target = "/v1/backlog", .bearer_token = "s3cret"});
  EXPECT_EQ(right->status, 200);
}

TEST(AdminServerTest, NonLoopbackAddressNeedsAToken) {
  AdminOptions options;
  options.listen = "0.0.0.0:0";
  auto server = AdminServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("bearer token"), std::string::npos);
}

TEST(AdminServerTest, ErrorsMapToHttpStatusesWithJsonBodies) {
  EXPECT_EQ(ErrorResponse(Status::NotFound("pool x")).status, 404);
  EXPECT_EQ(ErrorResponse(Status::InvalidArgument("bad")).status, 400);
  EXPECT_EQ(ErrorResponse(Status::FailedPrecondition("busy")).status, 409);
  EXPECT_EQ(ErrorResponse(Status::Unavailable("down")).status, 503);
  const Response r = ErrorResponse(Status::NotFound("pool \"x\" does not exist"));
  EXPECT_NE(r.body.find(R"("code":404)"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find(R"(pool \"x\" does not exist)"), std::string::npos) << r.body;
}

TEST(HttpClientTest, UnreachableEndpointIsUnavailable) {
  auto reply = HttpFetch({.endpoint = "127.0.0.1:1", .target = "/"});
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tidepool::admin
