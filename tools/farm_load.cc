// `mxsched farm` and `mxsched load` (docs/DESIGN.md §9, the CLI contract).
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "mxsched/admin/admin_server.h"
#include "mxsched/base/file.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/resolver.h"
#include "testbed/farm.h"
#include "testbed/load.h"
#include "tools/commands.h"

namespace mxsched::tools {
namespace {

volatile bool g_stop = false;
volatile sig_atomic_t g_signal = 0;  // the signal that set g_stop

}  // namespace

// Replaces `path` with `text` atomically. The temporary file is created by mkstemp (O_EXCL,
// a fresh random name in the same directory, so the rename stays on one file system): a
// symlink planted at a predictable "<path>.tmp" used to be followed and its target
// overwritten. On any failure the temporary file is removed (ctest cli_output).
bool ReplaceFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) return false;
  const mode_t mask = ::umask(0);
  ::umask(mask);
  bool ok = ::fchmod(fd, 0666 & ~mask) == 0;  // mkstemp's 0600 would hide a report
  const std::string body = text + "\n";
  for (size_t done = 0; ok && done < body.size();) {
    ssize_t n = ::write(fd, body.data() + done, body.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      ok = false;
    else
      done += static_cast<size_t>(n);
  }
  ok = (::close(fd) == 0) && ok;
  if (ok && std::rename(tmp.c_str(), path.c_str()) == 0) return true;
  ::unlink(tmp.c_str());
  return false;
}

void RaiseFdLimit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

const volatile bool* InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = [](int sig) {
    g_signal = sig;
    g_stop = true;
  };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  return &g_stop;
}

namespace {

struct FarmFlags {
  std::vector<std::string> listen, faults, flaps, source_faults;
  std::string stats_path;
  int64_t max_seconds = 600;
  int idle_timeout_ms = testbed::FarmOptions{}.idle_timeout_ms;
  int rset_fail_every = 0;
  std::vector<int> rate_windows_ms = testbed::FarmOptions{}.rate_windows_ms;
};

int RunFarm(const FarmFlags& f) {
  testbed::FarmOptions options;
  options.idle_timeout_ms = f.idle_timeout_ms;
  options.rset_fail_every = f.rset_fail_every;
  options.rate_windows_ms = f.rate_windows_ms;
  std::vector<std::pair<IpAddress, int64_t>> flaps;  // address, period ms
  const std::string& stats_path = f.stats_path;
  const int64_t max_seconds = f.max_seconds;
  for (const std::string& spec : f.listen) {
    auto eps = testbed::ParseListenSpec(spec);
    if (!eps.ok()) return UsageError(StrCat("farm: --listen: ", ToStd(eps.status().message())));
    options.listen.insert(options.listen.end(), eps->begin(), eps->end());
  }
  for (const std::string& spec : f.faults) {
    auto fault = testbed::ParseFaultSpec(spec);
    if (!fault.ok()) return UsageError(StrCat("farm: --fault: ", fault.status().message()));
    options.faults.push_back(*fault);
  }
  for (const std::string& spec : f.source_faults) {
    auto fault = testbed::ParseFaultSpec(spec);
    if (!fault.ok()) {
      return UsageError(StrCat("farm: --source-fault: ", fault.status().message()));
    }
    options.source_faults.push_back(*fault);
  }
  for (std::string_view spec : f.flaps) {
    // ADDR=MS: the address alternates between refusing and serving every MS ms.
    size_t eq = spec.find('=');
    uint64_t ms = 0;
    auto ip = IpAddress::Parse(spec.substr(0, eq == std::string_view::npos ? 0 : eq));
    if (eq == std::string_view::npos || !ip.ok() || !ParseUint(spec.substr(eq + 1), &ms) ||
        ms < 10 || ms > 3'600'000) {
      return UsageError(
            StrCat("farm: --flap \"", EchoForError(spec), "\": want ADDR=MS (10..3600000)"));
    }
    const bool served = std::any_of(options.listen.begin(), options.listen.end(),
                                    [&](const Endpoint& ep) { return ep.address == *ip; });
    if (!served) {
      return UsageError(
          StrCat("farm: --flap \"", EchoForError(spec), "\": the farm does not serve ", ip->ToString()));
    }
    flaps.emplace_back(*ip, static_cast<int64_t>(ms));
  }
  RaiseFdLimit();
  {
    // One listening socket per address, and room left for the connections it serves: say
    // so before opening any (else "socket: Too many open files" halfway through a range).
    rlimit rl;
    constexpr size_t kSpare = 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        options.listen.size() + kSpare > rl.rlim_cur) {
      return UsageError(StrCat("farm: --listen: ", options.listen.size(),
                               " addresses need as many listening sockets plus room for their "
                               "connections; this process may open ",
                               static_cast<uint64_t>(rl.rlim_cur),
                               " files (ulimit -n): serve at most ",
                               rl.rlim_cur > kSpare ? rl.rlim_cur - kSpare : 0, " addresses"));
    }
  }
  const volatile bool* stop = InstallStopSignals();
  auto farm = testbed::Farm::Start(options);
  if (!farm.ok()) {
    std::fprintf(stderr, "mxsched %s\n", ForTerminal(ToStd(farm.status().message())).c_str());
    // Mistakes in the options are usage errors; a failure to listen is not.
    return absl::IsInvalidArgument(farm.status()) ? 2 : 1;
  }
  // An unwritable --stats is found now, not when the run is over.
  if (!stats_path.empty() && !ReplaceFile(stats_path, (*farm)->StatsJson())) {
    (*farm)->Stop();
    return UsageError(
        StrCat("farm: --stats \"", EchoForError(stats_path), "\": cannot write: ", std::strerror(errno)));
  }
  std::fprintf(stderr, "mxsched farm: listening on %zu address(es), pid %d, for at most %lld s\n",
               options.listen.size(), getpid(), static_cast<long long>(max_seconds));
  const auto begin = std::chrono::steady_clock::now();
  const auto end = begin + std::chrono::seconds(max_seconds);
  std::vector<int64_t> flap_phase(flaps.size(), 0);
  while (!*stop && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(flaps.empty() ? 200 : 10));
    const int64_t elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now() - begin)
                                   .count();
    for (size_t f = 0; f < flaps.size(); ++f) {
      const int64_t phase = elapsed_ms / flaps[f].second;
      if (phase != flap_phase[f]) {
        flap_phase[f] = phase;
        testbed::Fault fault;
        if (phase % 2 == 1) fault.kind = testbed::Fault::Kind::kRefuse;
        (*farm)->SetFault(flaps[f].first, fault);
      }
    }
    static auto last = std::chrono::steady_clock::now();
    if (!stats_path.empty() && std::chrono::steady_clock::now() - last > std::chrono::seconds(1)) {
      last = std::chrono::steady_clock::now();
      ReplaceFile(stats_path, (*farm)->StatsJson());
    }
  }
  (*farm)->Stop();
  const std::string json = (*farm)->StatsJson();
  if (!stats_path.empty() && !ReplaceFile(stats_path, json)) {
    std::fprintf(stderr, "mxsched farm: cannot write \"%s\"\n", EchoForError(stats_path).c_str());
    return 1;
  }
  if (stats_path.empty()) std::printf("%s\n", json.c_str());
  return 0;
}

struct LoadFlags {
  std::string config_path, json_path, domains, admin;
  bool no_dns = false;
  testbed::LoadOptions o;
};

int RunLoadCommand(LoadFlags& f) {
  const std::string& config_path = f.config_path;
  const std::string& json_path = f.json_path;
  testbed::LoadOptions& o = f.o;
  std::string_view list = f.domains;
  std::string file_text;
  if (!list.empty() && list[0] == '@') {  // @FILE: one domain per line (or commas)
    // Regular files only, size-capped: a directory used to abort with ios_failure and
    // /dev/zero with bad_alloc (ctest cli_output).
    auto text = ReadInputFile(std::string(list.substr(1)));
    if (!text.ok()) return UsageError(StrCat("load: --domains: ", text.status().message()));
    file_text = *std::move(text);
    for (char& c : file_text) c = (c == '\n' || c == '\r') ? ',' : c;
    list = file_text;
  }
  for (std::string_view d : Split(list, ',')) {
    if (!d.empty()) o.domains.emplace_back(d);
  }
  if (o.domains.empty()) return UsageError("load: --domains names no domain");
  if (absl::Status s = testbed::ValidateDistinctDomains(o); !s.ok()) {
    return UsageError(StrCat("load: ", s.message()));
  }
  if (!o.dns_server.empty()) {
    auto servers = ResolveDnsServers(o.dns_server);
    if (!servers.ok()) return UsageError(StrCat("load: --dns: ", servers.status().message()));
    o.dns_server = *std::move(servers);
  }
  std::optional<Config> config = LoadConfigOrSay(config_path);
  if (!config) return 2;
  auto cluster = io::ClusterOptionsFromConfig(*config);
  if (!cluster.ok()) {
    std::fprintf(stderr, "mxsched: %s\n", ForTerminal(ToStd(cluster.status().message())).c_str());
    return 2;
  }
  if (cluster->has_value()) o.cluster = std::make_shared<io::ClusterLimits>(**cluster);
  RaiseFdLimit();
  auto shared = std::make_shared<const Config>(*std::move(config));
  io::DnsCache cache;
  // As `route`: without --dns the system's resolvers (/etc/resolv.conf); --no-dns: none.
  if (!f.no_dns) o.dns_cache = &cache;
  Selector selector(shared, {.resolver = o.dns_cache});
  std::unique_ptr<admin::AdminServer> admin_server;
  if (!f.admin.empty()) {
    // One ADDRESS:PORT or a bare port (127.0.0.1); anything else is refused before listening.
    auto where = admin::ParseAdminAddress(f.admin);
    if (!where.ok()) return UsageError(StrCat("load: --admin ", where.status().message()));
    admin::AdminOptions ao;
    ao.listen = where->ToString();
    ao.fleet = o.cluster.get();  // the mxsched_cluster_* metrics, fleet counts in /domains
    auto started = admin::AdminServer::Start(&selector, &cache, ao);
    if (!started.ok()) {
      // "address in use" is not a usage mistake but the run cannot go on without it.
      std::fprintf(stderr, "mxsched: load: --admin: %s\n",
                   ForTerminal(ToStd(started.status().message())).c_str());
      return 1;
    }
    admin_server = *std::move(started);
    std::fprintf(stderr, "mxsched load: admin endpoint on port %d (http://%s/)\n",
                 admin_server->port(), admin_server->endpoint().ToString().c_str());
    if (!where->address.IsLoopback()) {
      std::fprintf(stderr,
                   "mxsched load: warning: the admin endpoint listens on %s, not loopback: it "
                   "has no authentication, so anyone who reaches it can read every metric and "
                   "route and POST /refresh (SECURITY.md)\n",
                   where->address.ToString().c_str());
    }
  }
  if (isatty(STDERR_FILENO)) {
    const int64_t total = o.sessions;
    o.progress = [total](int64_t done, int64_t c, int64_t d, int64_t f) {
      std::fprintf(stderr, "\r%lld/%lld sessions: %lld connected, %lld deferred, %lld failed   ",
                   static_cast<long long>(done), static_cast<long long>(total),
                   static_cast<long long>(c), static_cast<long long>(d), static_cast<long long>(f));
    };
  }
  // SIGINT/SIGTERM stop the run: what was measured is still reported and written, then
  // the exit status is 128 + the signal (ctest cli_output).
  o.stop = InstallStopSignals();
  auto report = testbed::RunLoad(selector, o);
  if (o.progress) std::fprintf(stderr, "\n");
  if (!report.ok()) {
    std::fprintf(stderr, "mxsched load: %s\n", ForTerminal(ToStd(report.status().message())).c_str());
    return 2;
  }
  std::printf("%s", report->ToText().c_str());
  if (!json_path.empty() && !ReplaceFile(json_path, report->ToJson())) {
    std::fprintf(stderr, "mxsched load: cannot write \"%s\"\n", EchoForError(json_path).c_str());
    return 1;
  }
  if (report->stopped_by == "signal") return 128 + static_cast<int>(g_signal);
  if (report->sessions > 0 && report->connected == 0) {
    std::fprintf(stderr, "mxsched load: no session connected\n");
    return 1;
  }
  return 0;
}

}  // namespace

CommandRun SetUpFarmCommand(CLI::App& sub) {
  auto f = std::make_shared<FarmFlags>();
  sub.add_option("--listen", f->listen,
                 "Addresses to serve, repeatable: 127.0.1.1-127.0.1.64:2525, 127.0.0.9:2525 "
                 "or [::1]:2525 (loopback only)")
      ->required()
      ->type_name("ADDR[-ADDR]:PORT");
  sub.add_option("--fault", f->faults,
                 "Fault for an address, repeatable: refuse, blackhole (never answers), "
                 "tempfail (421), reset (RST), slow:MS (greeting after MS ms) or cap:N "
                 "(serve N at once, answer the rest 421)")
      ->type_name("ADDR=KIND");
  sub.add_option("--source-fault", f->source_faults,
                 "Fault for every connection FROM a client address (a receiver blocking one "
                 "sending IP), repeatable; same kinds as --fault (refuse acts as reset)")
      ->type_name("ADDR=KIND");
  sub.add_option("--flap", f->flaps,
                 "Alternate an address between refusing and serving every MS ms (10..3600000), "
                 "repeatable")
      ->type_name("ADDR=MS");
  sub.add_option("--stats", f->stats_path,
                 "Write per-address counts as JSON here every second and on exit")
      ->type_name("FILE")
      ->default_str("none: print them on exit");
  sub.add_option("--max-seconds", f->max_seconds, "Stop by itself after this long")
      ->check(CLI::Range(1, 86400));
  sub.add_option("--idle-timeout-ms", f->idle_timeout_ms,
                 "Close a client that sends nothing for this long while the farm waits for its "
                 "next command (counted as idle_closed; blackhole addresses exempt); 0: never")
      ->check(CLI::Range(0, 86'400'000))
      ->capture_default_str();
  sub.add_option("--rset-fail-every", f->rset_fail_every,
                 "Answer every Nth RSET (over all addresses) 421 and close, as a receiver that "
                 "dropped a cached session (counted as rsets_refused); 0: never")
      ->check(CLI::Range(0, 1'000'000))
      ->capture_default_str();
  sub.add_option("--rate-window-ms", f->rate_windows_ms,
                 "Report the most connections accepted within any window of this many ms "
                 "(accept_rate_peaks, per address and in all), as a receiver that limits the "
                 "connection rate counts; repeat or comma-separate for several")
      ->delimiter(',')
      ->check(CLI::Range(1, 3'600'000))
      ->capture_default_str();
  return [f] { return RunFarm(*f); };
}

CommandRun SetUpLoadCommand(CLI::App& sub) {
  auto f = std::make_shared<LoadFlags>();
  testbed::LoadOptions& o = f->o;
  sub.add_option("--config", f->config_path, "Configuration file (Momentum syntax)")
      ->required()
      ->type_name("FILE");
  auto* dns = sub.add_option("--dns", o.dns_server,
                             "DNS server(s) for MX and address lookups, by name or address "
                             "(port 53 if not given)")
                  ->type_name("HOST[:PORT][,...]")
                  ->default_str("the system's, from /etc/resolv.conf");
  sub.add_flag("--no-dns", f->no_dns,
               "Look nothing up: only literal-address routes resolve (names are deferred)")
      ->excludes(dns);
  sub.add_option("--domains", f->domains,
                 "Domains, comma-separated, or @FILE with one per line; sessions go "
                 "round-robin over them (or they are the bases of --distinct-domains)")
      ->required()
      ->type_name("D1,D2,...|@FILE");
  sub.add_option("--distinct-domains", o.distinct_domains,
                 "Send sessions round-robin over N generated domains instead: d0.D1, d1.D2, "
                 "... (name j is \"d<j>.\" and --domains' entry j mod their count), so the "
                 "first N sessions each meet a new domain and idle ones are evicted; the "
                 "report's domains line shows resident, peak and evicted")
      ->check(CLI::Range(int64_t{1}, testbed::LoadOptions::kMaxDistinctDomains))
      ->type_name("N")
      ->default_str("0: off");
  sub.add_option("--sessions", o.sessions, "Sessions to run in all")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  sub.add_option("--concurrency", o.concurrency, "Sessions in flight at once")
      ->check(CLI::Range(1, 1'000'000));
  sub.add_option("--threads", o.threads, "Threads, each with its own io_uring loop")
      ->check(CLI::Range(1, 256));
  sub.add_option("--hold-ms", o.hold_ms, "Hold each connection this long before QUIT")
      ->check(CLI::Range(0, 3'600'000));
  sub.add_option("--max-seconds", o.max_seconds,
                 "Stop the run after this long: sessions not finished by then are cut short "
                 "and counted deferred (\"stopped\")")
      ->check(CLI::Range(1, 86400));
  sub.add_option("--max-attempts", o.connector.max_attempts,
                 "Destinations tried per session (failover)")
      ->check(CLI::Range(1, 100));
  CLI::Option* message = sub.add_option("--message", o.message_bytes,
                 "Run one message transaction of about this many bytes before QUIT, like "
                 "smtp-source (-1: QUIT only)")
      ->check(CLI::Range(-1, 10'000'000))
      ->type_name("BYTES");
  sub.add_flag("--reuse", o.connector.reuse,
               "Park each connection after its message instead of QUIT, for the next session "
               "to reuse after RSET (docs/DESIGN.md §13; idle_timeout and "
               "max_deliveries_per_connection from the config); needs --message")
      ->needs(message);
  sub.add_flag("--pipelining", o.pipelining,
               "Send MAIL, RCPT and DATA in one write when the server's EHLO advertises "
               "PIPELINING (RFC 2920; smtp-source does not); with --reuse a reused "
               "connection's RSET goes in the same write (docs/DESIGN.md §13 rule 6); needs "
               "--message")
      ->needs(message);
  // Waiting is the default: without it a run against a limit "completes" at a huge rate with
  // nearly every session deferred, which measures nothing.
  o.connector.slot_wait_ms = 10'000;
  sub.add_option("--wait-ms", o.connector.slot_wait_ms,
                 "How long a session at a connection limit waits for a free slot (woken when "
                 "one frees) before it ends deferred; 0: defer at once")
      ->check(CLI::Range(0, 3'600'000));
  sub.add_option("--connect-timeout-ms", o.connector.connect_timeout_ms,
                 "TCP connect timeout per attempt")
      ->check(CLI::Range(1, 3'600'000))
      ->default_str("the config's connect_timeout");
  sub.add_option("--banner-timeout-ms", o.connector.banner_timeout_ms,
                 "Greeting timeout per attempt")
      ->check(CLI::Range(1, 3'600'000))
      ->default_str("the config's banner_timeout");
  CLI::Option* binding = sub.add_option("--binding", o.binding,
                 "Send every session through this Binding (its source address; "
                 "docs/DESIGN.md §4); the report shows counts per binding")
      ->type_name("NAME");
  sub.add_option("--binding-group", o.binding,
                 "Send every session through this Binding_Group, spread over its bindings")
      ->type_name("NAME")
      ->excludes(binding);
  sub.add_option("--admin", f->admin,
                 "Serve the admin endpoint (/metrics, /domains/NAME, /hosts, POST /refresh) "
                 "here while the load runs; port 0 picks one (printed on stderr)")
      ->type_name("ADDR:PORT");
  sub.add_option("--json", f->json_path, "Also write the report as JSON to this file")
      ->type_name("OUT")
      ->default_str("none");
  return [f] { return RunLoadCommand(*f); };
}

}  // namespace mxsched::tools
