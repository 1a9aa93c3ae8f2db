#include "mxsched/admin/admin_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
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

using Clock = std::chrono::steady_clock;
using Response = AdminServer::Response;

constexpr size_t kMaxFormBody = 1024;

Response Json(int status, const nlohmann::json& j, std::string extra_headers = "") {
  return {status, "application/json", Dump(j) + "\n", std::move(extra_headers)};
}

Response Error(int status, std::string_view why, std::string extra_headers = "") {
  return Json(status, nlohmann::json{{"error", std::string(why)}}, std::move(extra_headers));
}

const char* StatusText(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
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


// Strict percent-decoding of a path (no '+' rule): a bad escape is an error.
std::optional<std::string> DecodePath(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

// A domain from a request: every byte must be one a hostname may hold (letters, digits,
// '-', '.', '_'), checked before NormalizeHostname, so "a.test%00x" or an ESC is a 400 and
// never shortened to a name that exists.
absl::StatusOr<std::string> RequestDomain(std::string_view raw) {
  for (char c : raw) {
    if (!(IsAlnum(c) || c == '-' || c == '.' || c == '_')) {
      return absl::InvalidArgumentError(
          StrCat("\"", EchoForError(raw), "\": a domain name holds letters, digits, '-', '.' "
                 "and '_' only"));
    }
  }
  return NormalizeHostname(raw);
}

std::string Index() {
  return Dump(nlohmann::json{
             {"endpoints",
              nlohmann::json::array(
                  {{{"method", "GET"}, {"path", "/metrics"},
                    {"what", "Prometheus text exposition"}},
                   {{"method", "GET"}, {"path", "/hosts"},
                    {"what", "every destination: active, limit, state, failures, fleet count, "
                             "and the same per binding"}},
                   {{"method", "GET"}, {"path", "/throttles"},
                    {"what", "every rate throttle: rate, next start, allowed, waited, throttled"}},
                   {{"method", "GET"}, {"path", "/domains/NAME"},
                    {"what", "a resident domain's route with live counts"}},
                   {{"method", "POST"}, {"path", "/refresh?domain=NAME|all"},
                    {"what", "re-plan a domain now, or every domain lazily"}}})}}) +
         "\n";
}

}  // namespace

absl::StatusOr<Endpoint> ParseAdminAddress(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(StrCat("\"", EchoForError(text), "\": ", why));
  };
  constexpr std::string_view kWant = "want ADDRESS:PORT or a bare PORT (127.0.0.1)";
  if (text.empty()) return bad(kWant);
  if (text.find(',') != std::string_view::npos) {
    return bad("one address only: a list would open several listeners");
  }
  std::string_view host, port;
  if (text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("want [IPV6]:PORT");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (const size_t colon = text.rfind(':'); colon == std::string_view::npos) {
    port = text;
  } else {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return bad("write an IPv6 address as [ADDR]:PORT");
  }
  uint64_t p = 0;
  if (!port.empty() && (port.back() == 's' || port.back() == 'r') &&
      ParseUint(port.substr(0, port.size() - 1), &p)) {
    return bad("no port suffixes ('s' for TLS, 'r' for redirect are CivetWeb's): the endpoint "
               "speaks plain HTTP");
  }
  if (!ParseUint(port, &p) || p > 65535) return bad(StrCat("the port must be 0..65535; ", kWant));
  Endpoint ep;
  ep.port = static_cast<uint16_t>(p);
  if (host.empty()) {
    ep.address = IpAddress::V4(0x7F000001);
  } else {
    auto ip = IpAddress::Parse(host);
    if (!ip.ok()) return bad("the address must be an IP literal (127.0.0.1, [::1])");
    ep.address = *ip;
  }
  return ep;
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(Selector* selector,
                                                                io::DnsCache* dns,
                                                                const AdminOptions& options) {
  absl::StatusOr<Endpoint> ep = ParseAdminAddress(options.listen);
  if (!ep.ok()) return absl::InvalidArgumentError(StrCat("admin listener ", ep.status().message()));
  std::unique_ptr<AdminServer> server(new AdminServer(selector, dns, options));
  server->options_.max_connections = std::max(1, options.max_connections);
  const std::string where = ep->ToString();
  sockaddr_storage sa{};
  const socklen_t len = ep->ToSockaddr(&sa);
  const int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(StrCat("admin listener ", where, ": ", std::strerror(errno)));
  }
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (sa.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(fd, 64) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(StrCat(
        "admin listener ", where, ": ",
        err == EADDRINUSE ? "address in use (another process listens there; pick another port, "
                            "or 0 for a free one)"
                          : std::strerror(err)));
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  server->endpoint_ = *ep;
  server->endpoint_.port =
      ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  server->listen_fd_ = fd;
  server->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->wake_fd_ < 0) {
    return absl::UnavailableError(StrCat("admin listener ", where, ": eventfd: ",
                                         std::strerror(errno)));
  }
  server->thread_ = std::thread([s = server.get()] { s->Run(); });
  return server;
}

AdminServer::~AdminServer() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

namespace {

struct Conn {
  int fd = -1;
  Clock::time_point deadline;
  std::string in;
  std::string out;
  size_t sent = 0;
  bool answering = false;  // the request is complete; `out` is being written
  bool draining = false;   // answered and shut down for writing: input read and dropped
};

// The request in `c.in`, if complete: nullopt while more is needed, else the answer.
std::optional<Response> TryParse(AdminServer& server, const Conn& c, size_t max_header) {
  const size_t end = c.in.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c.in.size() > max_header) return Error(431, "request line and headers too large");
    return std::nullopt;
  }
  if (end + 4 > max_header) return Error(431, "request line and headers too large");
  const std::string_view head(c.in.data(), end);
  const size_t eol = head.find("\r\n");
  const std::string_view line = head.substr(0, eol);
  const std::vector<std::string_view> parts = Split(line, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() || parts[1][0] != '/' ||
      (parts[2] != "HTTP/1.1" && parts[2] != "HTTP/1.0")) {
    return Error(400, "malformed request line");
  }
  size_t content_length = 0;
  if (eol != std::string_view::npos) {
    for (std::string_view h : Split(head.substr(eol + 2), '\n')) {
      if (!h.empty() && h.back() == '\r') h.remove_suffix(1);
      const size_t colon = h.find(':');
      if (colon == std::string_view::npos) return Error(400, "malformed header");
      std::string_view name = h.substr(0, colon), value = h.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
        value.remove_suffix(1);
      }
      if (EqualsIgnoreCase(name, "transfer-encoding")) {
        return Error(501, "chunked bodies are not taken: send Content-Length");
      }
      if (EqualsIgnoreCase(name, "content-length")) {
        uint64_t n = 0;
        if (!ParseUint(value, &n)) return Error(400, "malformed Content-Length");
        if (n > kMaxFormBody) return Error(413, "request body too large");
        content_length = static_cast<size_t>(n);
      }
    }
  }
  if (c.in.size() < end + 4 + content_length) return std::nullopt;
  return server.Dispatch(parts[0], parts[1],
                         std::string_view(c.in).substr(end + 4, content_length));
}

std::string Serialize(const Response& r, bool head_only) {
  std::string out = StrCat("HTTP/1.1 ", r.status, " ", StatusText(r.status),
                           "\r\nContent-Type: ", r.content_type,
                           "\r\nContent-Length: ", r.body.size(),
                           "\r\nCache-Control: no-store\r\n", r.extra_headers,
                           "Connection: close\r\n\r\n");
  if (!head_only) out += r.body;
  return out;
}

}  // namespace

void AdminServer::Run() {
  std::list<Conn> conns;  // oldest first
  std::vector<pollfd> fds;
  std::vector<std::list<Conn>::iterator> which;
  const auto close_conn = [&](std::list<Conn>::iterator it) {
    ::close(it->fd);
    return conns.erase(it);
  };
  const auto answer = [&](Conn& c, const Response& r, bool head_only) {
    c.out = Serialize(r, head_only);
    c.sent = 0;
    c.answering = true;
    c.deadline = Clock::now() + std::chrono::milliseconds(options_.response_timeout_ms);
  };
  for (;;) {
    fds.clear();
    which.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    Clock::time_point next = Clock::time_point::max();
    for (auto it = conns.begin(); it != conns.end(); ++it) {
      fds.push_back(
          {it->fd, static_cast<short>(it->answering && !it->draining ? POLLOUT : POLLIN), 0});
      which.push_back(it);
      next = std::min(next, it->deadline);
    }
    int timeout = -1;
    if (next != Clock::time_point::max()) {
      timeout = static_cast<int>(std::clamp<int64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1,
          0, 60'000));
    }
    const int n = ::poll(fds.data(), fds.size(), timeout);
    if (n < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) break;  // stop
    const Clock::time_point now = Clock::now();
    for (size_t i = 0; i < which.size(); ++i) {
      auto it = which[i];
      Conn& c = *it;
      const short ev = fds[i + 2].revents;
      if (c.draining) {
        // A lingering close: the client may still be sending (an oversized request); closing
        // with unread input would reset the connection and lose the answer it has not read.
        if (ev & (POLLIN | POLLERR | POLLHUP)) {
          char buf[4096];
          const ssize_t r = ::recv(c.fd, buf, sizeof(buf), 0);
          if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            close_conn(it);
            continue;
          }
        }
      } else if (c.answering) {
        if (ev & (POLLOUT | POLLERR | POLLHUP)) {
          const ssize_t w =
              ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
          if (w > 0) c.sent += static_cast<size_t>(w);
          if (w < 0 && errno != EAGAIN && errno != EINTR) {
            close_conn(it);
            continue;
          }
          if (c.sent == c.out.size()) {
            ::shutdown(c.fd, SHUT_WR);
            c.draining = true;
            c.out.clear();
            c.out.shrink_to_fit();
            c.deadline = std::min(c.deadline, Clock::now() + std::chrono::seconds(2));
          }
        }
      } else if (ev & (POLLIN | POLLERR | POLLHUP)) {
        char buf[4096];
        const ssize_t r = ::recv(c.fd, buf, sizeof(buf), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
          close_conn(it);
          continue;
        }
        if (r > 0) {
          c.in.append(buf, static_cast<size_t>(r));
          if (std::optional<Response> resp =
                  TryParse(*this, c, static_cast<size_t>(options_.max_request_bytes))) {
            answer(c, *resp, c.in.rfind("HEAD ", 0) == 0);
            continue;
          }
        }
      }
      if (now >= c.deadline) {
        if (!c.answering) {
          // The whole request did not arrive in time: say so, best effort, and close.
          const std::string out = Serialize(Error(408, "request not complete in time"), false);
          (void)!::send(c.fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        close_conn(it);
      }
    }
    if (fds[1].revents & POLLIN) {
      for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (conns.size() >= static_cast<size_t>(options_.max_connections)) {
          // Full: the oldest connection still sending its request (or already answered)
          // makes room: a trickling client loses its place, an answer being written never.
          auto victim = std::find_if(conns.begin(), conns.end(),
                                     [](const Conn& c) { return !c.answering || c.draining; });
          if (victim == conns.end()) {
            const std::string out = Serialize(Error(503, "too many admin connections"), false);
            (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            ::close(fd);
            continue;
          }
          close_conn(victim);
        }
        Conn c;
        c.fd = fd;
        c.deadline = Clock::now() + std::chrono::milliseconds(options_.request_timeout_ms);
        conns.push_back(std::move(c));
      }
    }
  }
  for (Conn& c : conns) ::close(c.fd);
}

Response AdminServer::Dispatch(std::string_view method, std::string_view target,
                               std::string_view body) {
  const size_t qmark = target.find('?');
  std::optional<std::string> decoded = DecodePath(target.substr(0, qmark));
  if (!decoded) return Error(400, "malformed %-escape in the path");
  const std::string_view path = *decoded;
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view() : target.substr(qmark + 1);
  const bool get = method == "GET" || method == "HEAD";

  constexpr std::string_view kDomains = "/domains/";
  const bool known = path == "/" || path == "/metrics" || path == "/hosts" || path == "/throttles" ||
                     path == "/refresh" ||
                     (path.size() > kDomains.size() && path.substr(0, kDomains.size()) == kDomains);
  if (!known) return Error(404, StrCat("no such endpoint: ", EchoForError(path), " (GET / lists them)"));
  if (path == "/refresh") {
    if (method != "POST") {
      return Error(405, "use POST /refresh?domain=NAME|all", "Allow: POST\r\n");
    }
  } else if (!get) {
    return Error(405, StrCat(path.substr(0, 16), " is read-only: use GET"), "Allow: GET, HEAD\r\n");
  } else if (!query.empty()) {
    return Error(400, StrCat(path.substr(0, 16), " takes no query parameters"));
  }

  if (path == "/") return {200, "application/json", Index(), ""};
  if (path == "/metrics") {
    std::string text;
    metrics_.AppendText(&text);
    return {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text), ""};
  }
  if (path == "/hosts") {
    return Json(200, HostsJson(*selector_, selector_->clock().NowNanos(),
                               options_.max_host_series, options_.fleet));
  }
  if (path == "/throttles") return Json(200, ThrottlesJson(selector_->Throttles()));
  if (path != "/refresh") {
    absl::StatusOr<std::string> normalized = RequestDomain(path.substr(kDomains.size()));
    if (!normalized.ok()) {
      return Error(400, StrCat("invalid domain: ", normalized.status().message()));
    }
    std::optional<DomainView> view = selector_->DescribeResident(*normalized);
    if (!view) return Error(404, StrCat(*normalized, " is not resident (no route yet)"));
    return Json(200, DomainViewJson(*selector_, *view, dns_ != nullptr, options_.fleet));
  }

  // POST /refresh: the domain from the query, or else from a small form body.
  const std::string_view form = query.empty() ? body : query;
  std::optional<std::vector<std::pair<std::string, std::string>>> params = ParseForm(form);
  if (!params) return Error(400, "malformed query");
  std::optional<std::string> domain;
  for (const auto& [key, value] : *params) {
    if (key != "domain" || domain) {
      return Error(400, StrCat("unexpected parameter \"", EchoForError(key),
                               "\": want domain=NAME|all"));
    }
    domain = value;
  }
  if (!domain) return Error(400, "missing domain=NAME|all");
  if (*domain == "all") {
    selector_->RefreshAll();
    if (dns_ != nullptr) dns_->Clear();
    return Json(200, {{"refreshed", "all"}});
  }
  absl::StatusOr<std::string> normalized = RequestDomain(*domain);
  if (!normalized.ok()) {
    return Error(400, StrCat("invalid domain: ", normalized.status().message()));
  }
  if (!selector_->RefreshDomain(*normalized)) {
    return Error(404, StrCat(*normalized, " is not resident (no route yet)"));
  }
  return Json(200, {{"refreshed", *normalized},
                    {"route", DomainViewJson(*selector_, selector_->Describe(*normalized),
                                             dns_ != nullptr, options_.fleet)}});
}

}  // namespace mxsched::admin
