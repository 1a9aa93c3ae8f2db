#include "mxsched/admin/admin_server.h"

#include <civetweb.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "mxsched/admin/views.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/routes.h"

namespace mxsched::admin {

namespace {

constexpr size_t kMaxFormBody = 1024;

int Reply(mg_connection* conn, int status, std::string_view content_type, std::string_view body,
          std::string_view extra_headers = "") {
  const char* reason = mg_get_response_code_text(conn, status);
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %.*s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\n%.*sConnection: close\r\n\r\n",
            status, reason, static_cast<int>(content_type.size()), content_type.data(), body.size(),
            static_cast<int>(extra_headers.size()), extra_headers.data());
  mg_write(conn, body.data(), body.size());
  return status;
}

int ReplyJson(mg_connection* conn, int status, const nlohmann::json& j) {
  return Reply(conn, status, "application/json", Dump(j) + "\n");
}

int Error(mg_connection* conn, int status, std::string_view why,
          std::string_view extra_headers = "") {
  return Reply(conn, status, "application/json",
               Dump(nlohmann::json{{"error", std::string(why)}}) + "\n", extra_headers);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Strict application/x-www-form-urlencoded decoding: a bad %-escape is an error.
std::optional<std::string> Decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      const int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// key=value pairs; nullopt for malformed input (an empty key, a bad escape).
std::optional<std::vector<std::pair<std::string, std::string>>> ParseForm(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!q.empty()) {
    const size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    std::optional<std::string> key = Decode(pair.substr(0, eq));
    std::optional<std::string> value =
        Decode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
    if (!key || !value || key->empty()) return std::nullopt;
    out.emplace_back(*std::move(key), *std::move(value));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(Selector* selector,
                                                                io::DnsCache* dns,
                                                                const AdminOptions& options) {
  mg_init_library(0);  // reference-counted; balanced in the destructor
  std::unique_ptr<AdminServer> server(new AdminServer(selector, dns));
  const std::string threads = std::to_string(options.threads);
  const std::string max_request = std::to_string(options.max_request_bytes);
  const char* mg_options[] = {"listening_ports",
                              options.listen.c_str(),
                              "num_threads",
                              threads.c_str(),
                              "max_request_size",
                              max_request.c_str(),
                              "request_timeout_ms",
                              "10000",
                              "enable_keep_alive",
                              "no",
                              nullptr};
  mg_callbacks callbacks{};
  // CivetWeb would print start-up errors to stderr; they are returned in the status instead.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  mg_init_data init{&callbacks, server.get(), mg_options};
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  server->ctx_ = mg_start2(&init, &error);
  if (server->ctx_ == nullptr) {
    mg_exit_library();
    return absl::UnavailableError(StrCat("admin listener ", options.listen, ": ",
                                         error_text[0] ? error_text : "could not start"));
  }
  mg_set_request_handler(server->ctx_, "/", &AdminServer::Handle, server.get());
  mg_server_port ports[4] = {};
  const int n = mg_get_server_ports(server->ctx_, 4, ports);
  if (n > 0) server->port_ = ports[0].port;
  return server;
}

AdminServer::~AdminServer() {
  if (ctx_ != nullptr) {
    mg_stop(ctx_);
    mg_exit_library();
  }
}

int AdminServer::Handle(mg_connection* conn, void* self) {
  return static_cast<AdminServer*>(self)->Dispatch(conn);
}

int AdminServer::Dispatch(mg_connection* conn) {
  const mg_request_info* req = mg_get_request_info(conn);
  const std::string_view method = req->request_method ? req->request_method : "";
  const std::string_view path = req->local_uri ? req->local_uri : "";
  const std::string_view query = req->query_string ? req->query_string : "";
  const bool get = method == "GET" || method == "HEAD";

  constexpr std::string_view kDomains = "/domains/";
  const bool known = path == "/metrics" || path == "/hosts" || path == "/refresh" ||
                     (path.size() > kDomains.size() && path.substr(0, kDomains.size()) == kDomains);
  if (!known) return Error(conn, 404, StrCat("no such endpoint: ", path));
  if (path == "/refresh") {
    if (method != "POST") {
      return Error(conn, 405, "use POST /refresh?domain=NAME|all", "Allow: POST\r\n");
    }
  } else if (!get) {
    return Error(conn, 405, StrCat(path, " is read-only: use GET"), "Allow: GET, HEAD\r\n");
  } else if (!query.empty()) {
    return Error(conn, 400, StrCat(path, " takes no query parameters"));
  }

  if (path == "/metrics") {
    std::string text;
    metrics_.AppendText(&text);
    return Reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", text);
  }
  if (path == "/hosts") {
    return ReplyJson(conn, 200, HostsJson(selector_->registry(), selector_->clock().NowNanos()));
  }
  if (path != "/refresh") {
    const std::string_view name = path.substr(kDomains.size());
    absl::StatusOr<std::string> normalized = NormalizeHostname(name);
    if (!normalized.ok()) {
      return Error(conn, 400, StrCat("invalid domain: ", normalized.status().message()));
    }
    std::optional<DomainView> view = selector_->DescribeResident(*normalized);
    if (!view) return Error(conn, 404, StrCat(*normalized, " is not resident (no route yet)"));
    return ReplyJson(conn, 200, DomainViewJson(*selector_, *view, dns_ != nullptr));
  }

  // POST /refresh: the domain from the query, or else from a small form body.
  std::string form(query);
  if (form.empty() && req->content_length > 0) {
    if (req->content_length > static_cast<long long>(kMaxFormBody)) {
      return Error(conn, 413, "request body too large");
    }
    form.resize(static_cast<size_t>(req->content_length));
    size_t got = 0;
    while (got < form.size()) {
      const int r = mg_read(conn, form.data() + got, form.size() - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    form.resize(got);
  }
  std::optional<std::vector<std::pair<std::string, std::string>>> params = ParseForm(form);
  if (!params) return Error(conn, 400, "malformed query");
  std::optional<std::string> domain;
  for (const auto& [key, value] : *params) {
    if (key != "domain" || domain) {
      return Error(conn, 400, StrCat("unexpected parameter \"", key, "\": want domain=NAME|all"));
    }
    domain = value;
  }
  if (!domain) return Error(conn, 400, "missing domain=NAME|all");
  if (*domain == "all") {
    selector_->RefreshAll();
    if (dns_ != nullptr) dns_->Clear();
    return ReplyJson(conn, 200, {{"refreshed", "all"}});
  }
  absl::StatusOr<std::string> normalized = NormalizeHostname(*domain);
  if (!normalized.ok()) {
    return Error(conn, 400, StrCat("invalid domain: ", normalized.status().message()));
  }
  if (!selector_->RefreshDomain(*normalized)) {
    return Error(conn, 404, StrCat(*normalized, " is not resident (no route yet)"));
  }
  return ReplyJson(
      conn, 200,
      {{"refreshed", *normalized},
       {"route", DomainViewJson(*selector_, selector_->Describe(*normalized), dns_ != nullptr)}});
}

}  // namespace mxsched::admin
