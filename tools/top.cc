// `mxsched top --admin ADDR:PORT`: a live terminal view of a running worker, like `kcli top`
// or htop. Every interval it scrapes the worker's GET /metrics (AdminServer) and shows the
// busiest hosts (active connections against their limit, connections/s, failures/s,
// consecutive failures, state), under each host a row per egress binding that has used it
// (its active against its Binding::Host limit, rates, failure memory), with cluster_limits
// the fleet's count per host (FLEET) and the cluster mode, sessions/s by result,
// deferrals/s by reason, and waiting sessions; once connections were parked for reuse
// (docs/DESIGN.md §13), a PARKED column and a reuse/s line (reused, stale, parked now).
// Rates are differences between two scrapes.
//
// Terminal: the alternate screen, no echo, single keys; `q` or Ctrl-C quits and restores the
// terminal. Lines are cut to the terminal's width and columns dropped when it is narrow;
// rows stop at its height. A worker that goes away (or is not there yet) is shown as
// unreachable and asked again every interval. `--once` prints one plain frame (no screen
// control) and exits: 0 if the worker answered, 1 if not.
//
// HTTP through libcurl (Debian libcurl4-openssl-dev, already pulled in by prometheus-cpp-dev)
// rather than a hand-written client. Not thread-safe: runs on the main thread.
#include <curl/curl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mxsched/base/strings.h"
#include "tools/commands.h"

namespace mxsched::tools {
namespace {

struct TopFlags {
  std::string admin;
  int interval_ms = 1000;
  bool once = false;
};

// --- scraping ------------------------------------------------------------------------------

size_t Append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// The body of GET http://ADDR/PATH, or the error.
std::optional<std::string> HttpGet(const std::string& addr, std::string_view path,
                                   std::string* error) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    *error = "curl_easy_init failed";
    return std::nullopt;
  }
  const std::string url = StrCat("http://", addr, path);
  std::string body;
  char errbuf[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 3000L);
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  const CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    *error = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    return std::nullopt;
  }
  if (status != 200) {
    *error = StrCat("HTTP ", status, " from ", url);
    return std::nullopt;
  }
  return body;
}

// One egress binding at a host (docs/DESIGN.md §1 rule 13): the mxsched_binding_host_* series.
struct BindingRow {
  double active = 0, limit = 0, reachable = 1, consecutive = 0, retry_s = 0;
  double connections = 0, failures = 0;  // counters
  double connections_rate = 0, failures_rate = 0;
};

struct HostRow {
  std::string host, mx;
  double active = 0, limit = 0, configured = 0, reachable = 1, consecutive = 0, retry_s = 0;
  double connected = 0, failed = 0;  // counters (failed: every outcome but connected/local)
  double connected_rate = 0, failed_rate = 0;
  double cluster = -1;  // the fleet's count (mxsched_host_cluster_active_connections); -1: none
  double parked = 0;    // of active: parked for reuse (mxsched_host_parked_connections)
  std::map<std::string, BindingRow> bindings;  // by binding name (shown escaped)
};

std::string RawLabel(std::string_view labels, std::string_view key);

// One rate throttle (docs/DESIGN.md §12): the mxsched_throttle_* series of a scope and kind.
struct ThrottleRow {
  double starts = 0, waited = 0, deferred = 0;  // counters
};

struct Scrape {
  std::map<std::string, HostRow> hosts;  // by host
  std::map<std::string, ThrottleRow> throttles;  // by "SCOPE KIND" (shown escaped)
  std::map<std::string, double> deferrals, sessions;
  std::map<std::string, std::string> sources;  // binding -> its source address(es)
  double waiting = 0, domains = 0, server_active = 0;
  std::string cluster_mode;  // with cluster_limits: the mode in force ("" without)
  double cluster_workers = 0;
  // Connection reuse (docs/DESIGN.md §13): connections parked now, events by kind.
  double parked = 0;
  std::map<std::string, double> reuse;
  std::chrono::steady_clock::time_point at;
};

// Label value `key` from `{a="x",b="y"}` text (Prometheus escapes: \\, \", \n), as it may
// be shown: label values come from DNS (mx) and the worker, so through ForTerminal — a name
// with ESC or a newline broke the layout.
std::string Label(std::string_view labels, std::string_view key) {
  return ForTerminal(RawLabel(labels, key));
}

std::string RawLabel(std::string_view labels, std::string_view key) {
  const std::string needle = StrCat(key, "=\"");
  size_t p = 0;
  while ((p = labels.find(needle, p)) != std::string_view::npos) {
    if (p == 0 || labels[p - 1] == '{' || labels[p - 1] == ',') break;
    ++p;
  }
  if (p == std::string_view::npos) return "";
  std::string out;
  for (size_t i = p + needle.size(); i < labels.size() && labels[i] != '"'; ++i) {
    if (labels[i] == '\\' && i + 1 < labels.size()) {
      ++i;
      out += labels[i] == 'n' ? '\n' : labels[i];
    } else {
      out += labels[i];
    }
  }
  return out;
}

Scrape Parse(std::string_view text) {
  Scrape s;
  s.at = std::chrono::steady_clock::now();
  for (std::string_view line : Split(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t brace = line.find('{');
    const size_t space = line.rfind(' ');
    if (space == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, std::min(brace, line.find(' ')));
    const std::string_view labels =
        brace == std::string_view::npos ? std::string_view() : line.substr(brace, space - brace);
    const double v = std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
    if (name.rfind("mxsched_binding_host_", 0) == 0) {
      const std::string host = Label(labels, "host");
      const std::string binding = Label(labels, "binding");
      if (host.empty() || binding.empty()) continue;
      HostRow& h = s.hosts[host];
      h.host = host;
      h.mx = Label(labels, "mx");
      BindingRow& b = h.bindings[binding];
      if (name == "mxsched_binding_host_active_connections") b.active = v;
      if (name == "mxsched_binding_host_connection_limit") b.limit = v;
      if (name == "mxsched_binding_host_reachable") b.reachable = v;
      if (name == "mxsched_binding_host_consecutive_failures") b.consecutive = v;
      if (name == "mxsched_binding_host_retry_after_seconds") b.retry_s = v;
      if (name == "mxsched_binding_host_connections_total") b.connections = v;
      if (name == "mxsched_binding_host_failures_total") b.failures = v;
    } else if (name.rfind("mxsched_host_", 0) == 0 && name != "mxsched_hosts") {
      const std::string host = Label(labels, "host");
      if (host.empty()) continue;
      HostRow& h = s.hosts[host];
      h.host = host;
      h.mx = Label(labels, "mx");
      if (name == "mxsched_host_active_connections") h.active = v;
      if (name == "mxsched_host_connection_limit") h.limit = v;
      if (name == "mxsched_host_configured_connection_limit") h.configured = v;
      if (name == "mxsched_host_cluster_active_connections") h.cluster = v;
      if (name == "mxsched_host_parked_connections") h.parked = v;
      if (name == "mxsched_host_reachable") h.reachable = v;
      if (name == "mxsched_host_consecutive_failures") h.consecutive = v;
      if (name == "mxsched_host_retry_after_seconds") h.retry_s = v;
      if (name == "mxsched_host_connections_total") {
        const std::string outcome = Label(labels, "outcome");
        if (outcome == "connected") {
          h.connected = v;
        } else if (outcome != "local_error") {
          h.failed += v;
        }
      }
    } else if (name.rfind("mxsched_throttle_", 0) == 0) {
      ThrottleRow& t = s.throttles[StrCat(Label(labels, "scope"), " ", Label(labels, "kind"))];
      if (name == "mxsched_throttle_starts_total") t.starts = v;
      if (name == "mxsched_throttle_waited_total") t.waited = v;
      if (name == "mxsched_throttle_deferrals_total") t.deferred = v;
    } else if (name == "mxsched_acquire_deferrals_total") {
      s.deferrals[Label(labels, "reason")] = v;
    } else if (name == "mxsched_sessions_total") {
      s.sessions[Label(labels, "result")] = v;
    } else if (name == "mxsched_sessions_waiting") {
      s.waiting = v;
    } else if (name == "mxsched_domains_resident") {
      s.domains = v;
    } else if (name == "mxsched_server_active_connections") {
      s.server_active = v;
    } else if (name == "mxsched_binding_info") {
      s.sources[Label(labels, "binding")] = Label(labels, "source");
    } else if (name == "mxsched_cluster_mode") {
      if (v == 1) s.cluster_mode = Label(labels, "mode");
    } else if (name == "mxsched_cluster_live_workers") {
      s.cluster_workers = v;
    } else if (name == "mxsched_parked_connections") {
      s.parked = v;
    } else if (name == "mxsched_connection_reuse_events_total") {
      s.reuse[Label(labels, "event")] = v;
    }
  }
  return s;
}

// --- rendering -----------------------------------------------------------------------------

std::string Num(double v, int decimals = 0) {
  if (std::isinf(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string Fit(std::string s, size_t width) {
  if (s.size() > width) s.resize(width);
  return s;
}

std::string Pad(std::string_view s, size_t width, bool right = false) {
  std::string out(s.substr(0, width));
  std::string pad(width - out.size(), ' ');
  return right ? pad + out : out + pad;
}

std::vector<std::string> Render(const std::string& addr, const std::optional<Scrape>& now,
                                const std::optional<Scrape>& before, const std::string& error,
                                size_t width, size_t height) {
  std::vector<std::string> lines;
  char clock[16];
  const time_t t = time(nullptr);
  std::strftime(clock, sizeof(clock), "%H:%M:%S", localtime(&t));
  lines.push_back(StrCat("mxsched top  ", ForTerminal(addr), "  ", clock, "  (q quits)"));
  if (!error.empty()) {
    lines.push_back(StrCat("worker unreachable: ", ForTerminal(error), " - retrying"));
  }
  if (!now) {
    for (std::string& l : lines) l = Fit(l, width);
    return lines;
  }
  const double dt = before ? std::chrono::duration<double>(now->at - before->at).count() : 0.0;
  auto rate = [&](const std::map<std::string, double>& cur,
                  const std::map<std::string, double>& prev, const std::string& key) {
    if (dt <= 0) return 0.0;
    auto c = cur.find(key), p = prev.find(key);
    return c == cur.end() || p == prev.end() ? 0.0 : std::max(0.0, (c->second - p->second) / dt);
  };
  const std::map<std::string, double> none;
  const auto& prev_sessions = before ? before->sessions : none;
  const auto& prev_deferrals = before ? before->deferrals : none;
  lines.push_back(StrCat("sessions/s: ", Num(rate(now->sessions, prev_sessions, "connected"), 1),
                         " connected  ", Num(rate(now->sessions, prev_sessions, "deferred"), 1),
                         " deferred  ", Num(rate(now->sessions, prev_sessions, "failed"), 1),
                         " failed   waiting ", Num(now->waiting), "   active ",
                         Num(now->server_active), "   domains ", Num(now->domains)));
  std::string deferrals = "deferrals/s:";
  bool any = false;
  for (const auto& [reason, total] : now->deferrals) {
    const double r = rate(now->deferrals, prev_deferrals, reason);
    if (total == 0) continue;
    any = true;
    deferrals += StrCat(" ", reason, " ", Num(r, 1));
  }
  lines.push_back(any ? deferrals : deferrals + " none");
  // Rate throttles, when configured: starts, waits and deferrals per second of each (at
  // most 4 lines; /throttles has them all).
  size_t throttle_lines = 0;
  for (const auto& [key, t] : now->throttles) {
    if (throttle_lines == 4) {
      lines.push_back(StrCat("  ... ", now->throttles.size() - 4, " more throttle(s)"));
      break;
    }
    const ThrottleRow* p = nullptr;
    if (before) {
      auto it = before->throttles.find(key);
      if (it != before->throttles.end()) p = &it->second;
    }
    auto per_s = [&](double cur, double prev_v) {
      return p != nullptr && dt > 0 ? std::max(0.0, (cur - prev_v) / dt) : 0.0;
    };
    lines.push_back(StrCat("throttle ", key, ": ", Num(per_s(t.starts, p ? p->starts : 0), 1),
                           " starts/s  ", Num(per_s(t.waited, p ? p->waited : 0), 1),
                           " waited/s  ", Num(per_s(t.deferred, p ? p->deferred : 0), 1),
                           " deferred/s"));
    ++throttle_lines;
  }
  if (!now->cluster_mode.empty()) {
    // With cluster_limits (docs/DESIGN.md §7): FLEET is every worker's count on the host's
    // key, as this worker's last heartbeat read it, against the Host limit they share.
    lines.push_back(StrCat("fleet: mode ", now->cluster_mode, "   workers ",
                           Num(now->cluster_workers),
                           "   (FLEET: every worker's connections / the shared limit)"));
  }
  // Connection reuse (docs/DESIGN.md §13), once anything was parked: the PARKED column too.
  auto reuse_total = [&](const char* k) {
    auto it = now->reuse.find(k);
    return it == now->reuse.end() ? 0.0 : it->second;
  };
  const bool reuse = reuse_total("parked") > 0 || now->parked > 0;
  if (reuse) {
    const auto& prev_reuse = before ? before->reuse : none;
    lines.push_back(StrCat("reuse/s: ", Num(rate(now->reuse, prev_reuse, "reused"), 1),
                           " reused  ", Num(rate(now->reuse, prev_reuse, "stale"), 1),
                           " stale   parked ", Num(now->parked), "   stale in all ",
                           Num(reuse_total("stale"))));
  }
  lines.push_back("");

  std::vector<HostRow> rows;
  for (const auto& [key, h] : now->hosts) {
    HostRow r = h;
    if (before && dt > 0) {
      auto p = before->hosts.find(key);
      if (p != before->hosts.end()) {
        r.connected_rate = std::max(0.0, (h.connected - p->second.connected) / dt);
        r.failed_rate = std::max(0.0, (h.failed - p->second.failed) / dt);
        for (auto& [name, b] : r.bindings) {
          auto pb = p->second.bindings.find(name);
          if (pb == p->second.bindings.end()) continue;
          b.connections_rate = std::max(0.0, (b.connections - pb->second.connections) / dt);
          b.failures_rate = std::max(0.0, (b.failures - pb->second.failures) / dt);
        }
      }
    }
    rows.push_back(std::move(r));
  }
  std::sort(rows.begin(), rows.end(), [](const HostRow& a, const HostRow& b) {
    if (a.active != b.active) return a.active > b.active;
    if (a.connected_rate != b.connected_rate) return a.connected_rate > b.connected_rate;
    return a.host < b.host;
  });
  // Columns by priority: narrow terminals keep host, active/limit and conn/s.
  const bool fleet = !now->cluster_mode.empty();
  const bool show_mx = width >= (fleet ? 106u : 96u), show_state = width >= 64,
             show_fail = width >= 52, show_fleet = fleet && width >= 64;
  std::string header = Pad("HOST", 24) + Pad("ACTIVE/LIMIT", 13, true);
  if (show_fleet) header += Pad("FLEET", 10, true);
  const bool show_parked = reuse && width >= 72;
  if (show_parked) header += Pad("PARKED", 8, true);
  header += Pad("CONN/S", 9, true);
  if (show_fail) header += Pad("FAIL/S", 8, true) + Pad("CONSEC", 7, true);
  if (show_state) header += "  " + Pad("STATE", 14);
  if (show_mx) header += Pad("MX", 32);
  lines.push_back(header);
  // The retry time is a countdown: "down 11s" read as "down for 11 s".
  auto state = [](double reachable, double retry_s) {
    return reachable       ? std::string("up")
           : retry_s > 0 ? StrCat("retry in ", Num(retry_s), "s")
                         : std::string("probing");
  };
  const size_t room = height > lines.size() + 1 ? height - lines.size() - 1 : 0;
  size_t used = 0, hosts_shown = 0;
  for (size_t i = 0; i < rows.size() && used < room; ++i, ++hosts_shown) {
    const HostRow& h = rows[i];
    std::string line = Pad(h.host, 24) + Pad(StrCat(Num(h.active), "/", Num(h.limit)), 13, true);
    if (show_fleet) {
      line += Pad(h.cluster < 0 ? std::string("-")
                                : StrCat(Num(h.cluster), "/", Num(h.configured)),
                  10, true);
    }
    if (show_parked) line += Pad(Num(h.parked), 8, true);
    line += Pad(Num(h.connected_rate, 1), 9, true);
    if (show_fail) line += Pad(Num(h.failed_rate, 1), 8, true) + Pad(Num(h.consecutive), 7, true);
    if (show_state) line += "  " + Pad(state(h.reachable, h.retry_s), 14);
    if (show_mx) line += Pad(h.mx, 32);
    lines.push_back(line);
    ++used;
    // Per egress binding at this host (what the receiver counts per sending IP): active
    // against the Binding::Host limit, its own rates and failure memory; the MX column
    // shows the binding's source address.
    for (const auto& [name, b] : h.bindings) {
      if (used >= room) break;
      std::string sub = Pad(StrCat("  via ", name), 24) +
                        Pad(StrCat(Num(b.active), "/", Num(b.limit)), 13, true);
      if (show_fleet) sub += Pad("", 10);
      if (show_parked) sub += Pad("", 8);
      sub += Pad(Num(b.connections_rate, 1), 9, true);
      if (show_fail) {
        sub += Pad(Num(b.failures_rate, 1), 8, true) + Pad(Num(b.consecutive), 7, true);
      }
      if (show_state) sub += "  " + Pad(state(b.reachable, b.retry_s), 14);
      if (show_mx) {
        auto src = now->sources.find(name);
        if (src != now->sources.end() && !src->second.empty()) sub += Pad("from " + src->second, 32);
      }
      lines.push_back(sub);
      ++used;
    }
  }
  if (rows.size() > hosts_shown) {
    lines.push_back(StrCat("... ", rows.size() - hosts_shown, " more host(s)"));
  }
  for (std::string& l : lines) l = Fit(l, width);
  return lines;
}

// --- terminal ------------------------------------------------------------------------------

class Terminal {
 public:
  Terminal() : tty_(isatty(STDIN_FILENO) && isatty(STDOUT_FILENO)) {
    if (!tty_ || tcgetattr(STDIN_FILENO, &saved_) != 0) {
      tty_ = false;
      return;
    }
    termios raw = saved_;
    raw.c_lflag &= ~(ICANON | ECHO);  // keys one by one, not echoed; ISIG kept for Ctrl-C
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    std::fputs("\x1b[?1049h\x1b[?25l", stdout);  // alternate screen, hide cursor
    std::fflush(stdout);
  }
  ~Terminal() {
    if (!tty_) return;
    std::fputs("\x1b[?25h\x1b[?1049l", stdout);
    std::fflush(stdout);
    tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  bool tty() const { return tty_; }
  void Size(size_t* width, size_t* height) const {
    winsize ws{};
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
      *width = ws.ws_col;
      *height = ws.ws_row;
    } else {
      *width = 100;
      *height = 40;
    }
  }
  void Draw(const std::vector<std::string>& lines) {
    std::string out = "\x1b[H";
    for (const std::string& l : lines) out += l + "\x1b[K\r\n";
    out += "\x1b[J";
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
  }
  // Waits up to `ms` for a key; true if it was q/Q.
  bool WaitForQuit(int ms, const volatile bool* stop) {
    pollfd p{STDIN_FILENO, POLLIN, 0};
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!*stop) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      if (left <= 0) return false;
      const int r = poll(tty_ ? &p : nullptr, tty_ ? 1 : 0, static_cast<int>(left));
      if (r > 0) {
        char c = 0;
        if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q')) return true;
      }
    }
    return true;
  }

 private:
  bool tty_;
  termios saved_{};
};

int RunTop(const TopFlags& f) {
  if (f.interval_ms < 100) return UsageError("top: --interval-ms must be at least 100");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  std::optional<Scrape> now, before;
  std::string error;
  auto scrape = [&] {
    std::string why;
    std::optional<std::string> body = HttpGet(f.admin, "/metrics", &why);
    if (!body) {
      error = why;
      return false;
    }
    error.clear();
    before = std::move(now);
    now = Parse(*body);
    return true;
  };
  if (f.once) {
    // Rates need two samples: a single scrape showed every rate as 0.0.
    bool ok = scrape();
    if (ok) {
      std::this_thread::sleep_for(std::chrono::milliseconds(f.interval_ms));
      ok = scrape();
    }
    for (const std::string& l : Render(f.admin, now, before, error, 200, 1000)) {
      std::printf("%s\n", l.c_str());
    }
    curl_global_cleanup();
    return ok ? 0 : 1;
  }
  const volatile bool* stop = InstallStopSignals();
  {
    Terminal term;
    while (!*stop) {
      scrape();
      size_t width, height;
      term.Size(&width, &height);
      term.Draw(Render(f.admin, now, before, error, width, height));
      if (term.WaitForQuit(f.interval_ms, stop)) break;
    }
  }
  curl_global_cleanup();
  return 0;
}

}  // namespace

CommandRun SetUpTopCommand(CLI::App& sub) {
  auto f = std::make_shared<TopFlags>();
  sub.add_option("--admin", f->admin, "The worker's admin endpoint (load --admin, AdminServer)")
      ->required()
      ->type_name("ADDR:PORT");
  sub.add_option("--interval-ms", f->interval_ms, "Refresh interval");
  sub.add_flag("--once", f->once,
               "Print one plain frame and exit (1 if the worker is away); rates are over two "
               "scrapes --interval-ms apart");
  return [f] { return RunTop(*f); };
}

}  // namespace mxsched::tools
