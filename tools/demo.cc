// `mxsched demo`: Momentum's warning about global routes, measured. An in-process farm serves two
// route layouts for the same 250 domains, the same per-host limit and the same hold time:
//   global route  every domain routed through the same 4 smarthosts
//   MX spread     every domain has its own MX
// Sessions wait for a slot (docs/DESIGN.md §1 rule 8) rather than fail, so the rate shows capacity.
// Prints a table, writes demo.json and demo.csv, and demo.png when gnuplot is installed.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "mxsched/base/strings.h"
#include "testbed/farm.h"
#include "testbed/json.h"
#include "testbed/load.h"
#include "tools/commands.h"

namespace mxsched::tools {
namespace {

constexpr int kDomains = 250;
constexpr int kGlobalHosts = 4;
constexpr int kHostLimit = 8;
constexpr int kHoldMs = 20;
constexpr int kConcurrency = 256;

struct Scenario {
  std::string name;
  std::string config;
  testbed::LoadReport report;
  int64_t max_server_peak = 0;
  int hosts_used = 0;
};

std::string GlobalConfig(uint16_t port) {
  std::string c = StrCat("remote_smtp_port = ", port, "\nroutes = (");
  for (int h = 1; h <= kGlobalHosts; ++h) c += StrCat(" \"smtp://127.0.70.", h, "?pref=10\"");
  c += " )\n";
  for (int h = 1; h <= kGlobalHosts; ++h) {
    c += StrCat("Host \"127.0.70.", h, "\" { max_outbound_connections = ", kHostLimit, " }\n");
  }
  return c;
}

std::string SpreadConfig(uint16_t port) {
  std::string c = StrCat("remote_smtp_port = ", port, "\n");
  for (int d = 0; d < kDomains; ++d) {
    c += StrCat("Domain \"d", d, ".example\" { routes = ( \"127.0.71.", d + 1, "\" ) }\n");
    c += StrCat("Host \"127.0.71.", d + 1, "\" { max_outbound_connections = ", kHostLimit, " }\n");
  }
  return c;
}

// The load report counts sessions cut short by the end of the run as deferred, kind
// "stopped" (testbed/load.h); the demo runs "as many sessions as fit", so every run ends so.
int64_t StoppedAtEnd(const testbed::LoadReport& r) {
  auto it = r.deferrals.find("stopped");
  return it == r.deferrals.end() ? 0 : it->second;
}
int64_t Deferred(const testbed::LoadReport& r) { return r.deferred - StoppedAtEnd(r); }

// "p50 / p99 ms", or "—" when no session got there (count 0).
std::string PairMs(int64_t count, int64_t p50_us, int64_t p99_us) {
  if (count == 0) return "\u2014";
  char text[64];
  std::snprintf(text, sizeof(text), "%.1f / %.1f ms", p50_us / 1e3, p99_us / 1e3);
  return text;
}

nlohmann::json MsOrNull(int64_t count, int64_t us) {
  return count == 0 ? nlohmann::json(nullptr) : nlohmann::json(us / 1e3);
}

// demo.json per scenario: the table's numbers under plain names, then the load report
// ("details") without what reads wrong here: the demo asks for 10,000,000 sessions and runs
// as many as fit, so "not_started" says nothing ("sessions" is "sessions_started" above),
// and the report's "deferred" counts the sessions stopped at the end of the run.
nlohmann::json ScenarioJson(const Scenario& sc, int seconds) {
  const testbed::LoadReport& r = sc.report;
  nlohmann::json details = nlohmann::json::parse(r.ToJson());
  for (const char* key : {"sessions", "not_started", "deferred", "stopped_by"}) details.erase(key);
  return {{"seconds", seconds},
          {"hosts_used", sc.hosts_used},
          {"host_limit", kHostLimit},
          {"max_server_peak_per_host", sc.max_server_peak},
          {"sessions_started", r.sessions},
          {"connected", r.connected},
          {"connected_per_second", r.connected_per_second},
          {"deferred", Deferred(r)},
          {"stopped_at_end_of_run", StoppedAtEnd(r)},
          {"failed", r.failed},
          {"sessions_that_waited_for_a_slot", r.waited},
          {"slot_wait_p50_ms", MsOrNull(r.waited, r.wait_p50_us)},
          {"slot_wait_p99_ms", MsOrNull(r.waited, r.wait_p99_us)},
          {"connect_p50_ms", MsOrNull(r.greeted, r.connect_p50_us)},
          {"connect_p99_ms", MsOrNull(r.greeted, r.connect_p99_us)},
          {"details", std::move(details)}};
}

struct DemoFlags {
  int seconds = 4;
  std::string out = "mxsched-demo";
};

int RunDemo(const DemoFlags& f) {
  const int seconds = f.seconds;
  const std::string& out = f.out;
  // The output directory is checked before the run, not found missing after it.
  if (mkdir(out.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "mxsched demo: --out \"%s\": cannot create: %s\n",
                 EchoForError(out).c_str(), std::strerror(errno));
    return 1;
  }
  struct stat st {};
  if (stat(out.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || access(out.c_str(), W_OK) != 0) {
    std::fprintf(stderr, "mxsched demo: --out \"%s\": not a writable directory\n",
                 EchoForError(out).c_str());
    return 1;
  }
  RaiseFdLimit();
  const uint16_t port = testbed::FreeLoopbackPort();
  testbed::FarmOptions fo;
  for (auto spec : {StrCat("127.0.70.1-127.0.70.", kGlobalHosts, ":", port),
                    StrCat("127.0.71.1-127.0.71.", kDomains, ":", port)}) {
    auto eps = testbed::ParseListenSpec(spec);
    fo.listen.insert(fo.listen.end(), eps->begin(), eps->end());
  }
  auto farm = testbed::Farm::Start(fo);
  if (!farm.ok()) {
    std::fprintf(stderr, "mxsched demo: %s\n", ForTerminal(ToStd(farm.status().message())).c_str());
    return 1;
  }
  std::printf(
      "mxsched demo: %d domains, per-host limit %d, hold %d ms, %d sessions in flight,\n"
      "%d s per scenario; farm on %zu loopback addresses, port %u\n\n",
      kDomains, kHostLimit, kHoldMs, kConcurrency, seconds, fo.listen.size(), port);
  std::vector<Scenario> scenarios(2);
  scenarios[0].name = "global route";
  scenarios[0].config = GlobalConfig(port);
  scenarios[1].name = "MX spread";
  scenarios[1].config = SpreadConfig(port);
  for (Scenario& sc : scenarios) {
    auto parsed = ParseConfig(sc.config, sc.name);
    if (!parsed.ok()) {
      std::fprintf(stderr, "demo config: %s\n", ForTerminal(ToStd(parsed.status().message())).c_str());
      return 1;
    }
    auto config = std::make_shared<const Config>(*std::move(parsed));
    Selector selector(config);
    (*farm)->ResetCounters();
    testbed::LoadOptions o;
    for (int d = 0; d < kDomains; ++d) o.domains.push_back(StrCat("d", d, ".example"));
    o.sessions = 10'000'000;
    o.concurrency = kConcurrency;
    o.threads = 2;
    o.hold_ms = kHoldMs;
    o.max_seconds = seconds;
    o.connector.slot_wait_ms = 10'000;
    o.connector.connect_timeout_ms = o.connector.banner_timeout_ms = 5'000;
    const auto start = std::chrono::steady_clock::now();
    int64_t last_connected = 0;
    auto last_t = start;
    const std::string name = sc.name;
    o.progress_interval_ms = 250;
    const bool tty = isatty(STDERR_FILENO);
    if (!tty) std::fprintf(stderr, "  %s: running for %d s\n", name.c_str(), seconds);
    if (tty)
      o.progress = [&](int64_t, int64_t c, int64_t, int64_t) {
        const auto now = std::chrono::steady_clock::now();
        const double dt = std::chrono::duration<double>(now - last_t).count();
        std::fprintf(stderr, "\r  %-13s %4.1f s  %8.0f connected/s   ", name.c_str(),
                     std::chrono::duration<double>(now - start).count(),
                     dt > 0 ? (c - last_connected) / dt : 0.0);
        last_connected = c;
        last_t = now;
      };
    auto r = testbed::RunLoad(selector, o);
    if (tty) std::fprintf(stderr, "\n");
    if (!r.ok()) {
      std::fprintf(stderr, "mxsched demo: %s\n", ForTerminal(ToStd(r.status().message())).c_str());
      return 1;
    }
    sc.report = *std::move(r);
    for (const auto& s : (*farm)->Stats()) {
      sc.max_server_peak = std::max(sc.max_server_peak, s.peak);
      sc.hosts_used += s.total > 0;
    }
  }
  (*farm)->Stop();

  std::printf(
      "\n| scenario | hosts used | connected/s | waited for a slot p50 / p99 | "
      "connect p50 / p99 | deferred | stopped at end of run | failed | "
      "max server-side peak per host |\n"
      "|---|---|---|---|---|---|---|---|---|\n");
  for (const Scenario& sc : scenarios) {
    const auto& r = sc.report;
    std::printf("| %s | %d | %.0f | %s | %s | %lld | %lld | %lld | %lld (limit %d) |\n",
                sc.name.c_str(), sc.hosts_used, r.connected_per_second,
                PairMs(r.waited, r.wait_p50_us, r.wait_p99_us).c_str(),
                PairMs(r.greeted, r.connect_p50_us, r.connect_p99_us).c_str(),
                static_cast<long long>(Deferred(r)), static_cast<long long>(StoppedAtEnd(r)),
                static_cast<long long>(r.failed), static_cast<long long>(sc.max_server_peak),
                kHostLimit);
  }
  std::printf(
      "\n\"stopped at end of run\": sessions still in flight when the scenario's %d s ran out "
      "(cut short\nand sent QUIT), not deferred mail; \"\u2014\" where no session waited for a "
      "slot.\n",
      seconds);
  const double cap = kGlobalHosts * kHostLimit * 1000.0 / kHoldMs;
  std::printf(
      "\nWhy: a global route sends every domain through the same %d hosts, and their limits are\n"
      "shared: %d hosts x %d connections = %d at once; each session holds its slot for about\n"
      "%d ms, so the route cannot exceed ~%.0f sessions/s however many domains queue behind it.\n"
      "With MX spread each domain brings its own host and its own %d slots, and the rate\n"
      "is bounded by the %d sessions in flight and the CPU instead. (Momentum's documentation:\n"
      "\"Message throughput can be greatly reduced if a global route is set.\")\n",
      kGlobalHosts, kGlobalHosts, kHostLimit, kGlobalHosts * kHostLimit, kHoldMs, cap, kHostLimit,
      kConcurrency);

  {
    nlohmann::json doc = nlohmann::json::object();
    for (const Scenario& sc : scenarios) doc[sc.name] = ScenarioJson(sc, seconds);
    std::ostringstream csv;
    csv << "seconds,global route,MX spread\n";
    const auto& a = scenarios[0].report.connected_timeline;
    const auto& b = scenarios[1].report.connected_timeline;
    // The last sample of each run covers a partial interval (the drain): leave it out.
    const size_t n = std::min(a.size(), b.size());
    for (size_t i = 0; i + 1 < n; ++i) {
      csv << (i + 1) * 0.25 << "," << (i < a.size() ? a[i] * 4 : 0) << ","
          << (i < b.size() ? b[i] * 4 : 0) << "\n";
    }
    // Written like load's --json: a symlink planted in DIR is replaced, not followed.
    std::string text = csv.str();
    text.pop_back();  // ReplaceFile ends the file with its own newline
    if (!ReplaceFile(out + "/demo.json", DumpJson(doc)) || !ReplaceFile(out + "/demo.csv", text)) {
      const std::string shown = ForTerminal(out);
      std::fprintf(stderr, "mxsched demo: cannot write %s/demo.json or %s/demo.csv\n",
                   shown.c_str(), shown.c_str());
      return 1;
    }
  }
  // gnuplot runs in DIR with relative file names and an argv (no shell): whatever DIR is
  // called, nothing in it reaches a command line.
  const char* script =
      "set terminal png size 900,500 noenhanced; set output 'demo.png'; "
      "set datafile separator ','; set key autotitle columnhead; "
      "set title 'mxsched demo: global route vs MX spread'; set xlabel 'seconds'; "
      "set ylabel 'connected sessions/s'; set yrange [0:*]; "
      "plot 'demo.csv' using 1:2 with lines lw 2, '' using 1:3 with lines lw 2";
  bool png = false;
  if (const pid_t pid = fork(); pid == 0) {
    const int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      dup2(devnull, STDOUT_FILENO);
      dup2(devnull, STDERR_FILENO);
    }
    if (chdir(out.c_str()) == 0) execlp("gnuplot", "gnuplot", "-e", script, nullptr);
    _exit(127);  // no gnuplot: demo.png is optional
  } else if (pid > 0) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    png = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  const std::string shown = ForTerminal(out);  // --out is argv: shown, never obeyed
  std::printf("\nwrote %s/demo.json, %s/demo.csv%s\n", shown.c_str(), shown.c_str(),
              png ? StrCat(", ", shown, "/demo.png").c_str()
                  : " (install gnuplot-nox for demo.png)");
  return 0;
}

}  // namespace

CommandRun SetUpDemoCommand(CLI::App& sub) {
  auto f = std::make_shared<DemoFlags>();
  sub.add_option("--seconds", f->seconds, "Run time of each scenario")->check(CLI::Range(1, 60));
  sub.add_option("--out", f->out, "Directory for demo.json, demo.csv and demo.png")
      ->type_name("DIR");
  return [f] { return RunDemo(*f); };
}

}  // namespace mxsched::tools
