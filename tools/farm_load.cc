// `mxsched farm` and `mxsched load` (DESIGN §3).
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>

#include "testbed/farm.h"
#include "testbed/load.h"
#include "mxsched/io/resolver.h"
#include "mxsched/base/strings.h"
#include "tools/commands.h"

namespace mxsched::tools {
namespace {

volatile bool g_stop = false;

bool WriteFile(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return false;
    out << text << "\n";
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

bool ParseInt(std::string_view s, int64_t lo, int64_t hi, int64_t* out) {
  uint64_t v;
  if (!ParseUint(s, &v) || static_cast<int64_t>(v) < lo || static_cast<int64_t>(v) > hi) {
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

void RaiseFdLimit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

const volatile bool* InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = true; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  return &g_stop;
}

int FarmCommand(const Args& args) {
  io::FarmOptions options;
  std::vector<std::pair<IpAddress, int64_t>> flaps;  // address, period ms
  std::string stats_path;
  int64_t max_seconds = 600;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--listen" && has_value) {
      auto eps = io::ParseListenSpec(args[++i]);
      if (!eps.ok()) return UsageError(ToStd(eps.status().message()));
      options.listen.insert(options.listen.end(), eps->begin(), eps->end());
    } else if (a == "--fault" && has_value) {
      auto f = io::ParseFaultSpec(args[++i]);
      if (!f.ok()) return UsageError(ToStd(f.status().message()));
      options.faults.push_back(*f);
    } else if (a == "--flap" && has_value) {
      // ADDR=MS: the address alternates between refusing and serving every MS ms.
      std::string_view spec = args[++i];
      size_t eq = spec.find('=');
      int64_t ms = 0;
      auto ip = IpAddress::Parse(spec.substr(0, eq == std::string_view::npos ? 0 : eq));
      if (eq == std::string_view::npos || !ip.ok() ||
          !ParseInt(spec.substr(eq + 1), 10, 3'600'000, &ms)) {
        return UsageError(StrCat("farm: --flap \"", spec, "\": want ADDR=MS (10..3600000)"));
      }
      flaps.emplace_back(*ip, ms);
    } else if (a == "--stats" && has_value) {
      stats_path = args[++i];
    } else if (a == "--max-seconds" && has_value) {
      if (!ParseInt(args[++i], 1, 86400, &max_seconds)) {
        return UsageError("farm: --max-seconds takes 1..86400");
      }
    } else {
      return UsageError(StrCat("farm: unknown or incomplete option ", a));
    }
  }
  if (options.listen.empty()) return UsageError("farm: give at least one --listen");
  RaiseFdLimit();
  const volatile bool* stop = InstallStopSignals();
  auto farm = io::Farm::Start(options);
  if (!farm.ok()) {
    std::fprintf(stderr, "mxsched farm: %s\n", std::string(farm.status().message()).c_str());
    return 1;
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
        io::Fault fault;
        if (phase % 2 == 1) fault.kind = io::Fault::Kind::kRefuse;
        (*farm)->SetFault(flaps[f].first, fault);
      }
    }
    static auto last = std::chrono::steady_clock::now();
    if (!stats_path.empty() && std::chrono::steady_clock::now() - last > std::chrono::seconds(1)) {
      last = std::chrono::steady_clock::now();
      WriteFile(stats_path, (*farm)->StatsJson());
    }
  }
  (*farm)->Stop();
  const std::string json = (*farm)->StatsJson();
  if (!stats_path.empty() && !WriteFile(stats_path, json)) {
    std::fprintf(stderr, "mxsched farm: cannot write %s\n", stats_path.c_str());
    return 1;
  }
  if (stats_path.empty()) std::printf("%s\n", json.c_str());
  return 0;
}

int LoadCommand(const Args& args) {
  std::string config_path, json_path;
  io::LoadOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    const bool has_value = i + 1 < args.size();
    int64_t v = 0;
    auto number = [&](int64_t lo, int64_t hi) {
      return has_value && ParseInt(args[++i], lo, hi, &v);
    };
    if (a == "--config" && has_value) {
      config_path = args[++i];
    } else if (a == "--dns" && has_value) {
      o.dns_server = args[++i];
    } else if (a == "--domains" && has_value) {
      std::string_view list = args[++i];
      std::string file_text;
      if (!list.empty() && list[0] == '@') {  // @FILE: one domain per line (or commas)
        std::ifstream in{std::string(list.substr(1))};
        if (!in) return UsageError(StrCat("load: cannot read ", list.substr(1)));
        file_text.assign(std::istreambuf_iterator<char>(in), {});
        for (char& c : file_text) c = (c == '\n' || c == '\r') ? ',' : c;
        list = file_text;
      }
      for (std::string_view d : Split(list, ',')) {
        if (!d.empty()) o.domains.emplace_back(d);
      }
    } else if (a == "--json" && has_value) {
      json_path = args[++i];
    } else if (a == "--sessions") {
      if (!number(0, int64_t{1} << 40)) return UsageError("load: --sessions takes a count");
      o.sessions = v;
    } else if (a == "--concurrency") {
      if (!number(1, 1'000'000)) return UsageError("load: --concurrency takes 1..1000000");
      o.concurrency = static_cast<int>(v);
    } else if (a == "--threads") {
      if (!number(1, 256)) return UsageError("load: --threads takes 1..256");
      o.threads = static_cast<int>(v);
    } else if (a == "--hold-ms") {
      if (!number(0, 3'600'000)) return UsageError("load: --hold-ms takes 0..3600000");
      o.hold_ms = static_cast<int>(v);
    } else if (a == "--max-seconds") {
      if (!number(1, 86400)) return UsageError("load: --max-seconds takes 1..86400");
      o.max_seconds = static_cast<int>(v);
    } else if (a == "--max-attempts") {
      if (!number(1, 100)) return UsageError("load: --max-attempts takes 1..100");
      o.connector.max_attempts = static_cast<int>(v);
    } else if (a == "--message") {
      if (!number(0, 10'000'000)) return UsageError("load: --message takes a byte count");
      o.message_bytes = static_cast<int>(v);
    } else if (a == "--wait-ms") {
      if (!number(0, 3'600'000)) return UsageError("load: --wait-ms takes 0..3600000");
      o.connector.slot_wait_ms = static_cast<int>(v);
    } else if (a == "--connect-timeout-ms") {
      if (!number(1, 3'600'000)) return UsageError("load: --connect-timeout-ms takes 1..3600000");
      o.connector.connect_timeout_ms = static_cast<int>(v);
    } else if (a == "--banner-timeout-ms") {
      if (!number(1, 3'600'000)) return UsageError("load: --banner-timeout-ms takes 1..3600000");
      o.connector.banner_timeout_ms = static_cast<int>(v);
    } else {
      return UsageError(StrCat("load: unknown or incomplete option ", a));
    }
  }
  if (config_path.empty()) return UsageError("load: --config FILE is required");
  if (o.domains.empty()) return UsageError("load: --domains D1,D2,... is required");
  auto config = LoadConfigFile(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "mxsched: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  RaiseFdLimit();
  auto shared = std::make_shared<const Config>(*std::move(config));
  io::DnsCache cache;
  if (!o.dns_server.empty()) o.dns_cache = &cache;
  Selector selector(shared, nullptr, nullptr, o.dns_cache);
  if (isatty(STDERR_FILENO)) {
    const int64_t total = o.sessions;
    o.progress = [total](int64_t done, int64_t c, int64_t d, int64_t f) {
      std::fprintf(stderr, "\r%lld/%lld sessions: %lld connected, %lld deferred, %lld failed   ",
                   static_cast<long long>(done), static_cast<long long>(total),
                   static_cast<long long>(c), static_cast<long long>(d),
                   static_cast<long long>(f));
    };
  }
  auto report = io::RunLoad(selector, shared, o);
  if (o.progress) std::fprintf(stderr, "\n");
  if (!report.ok()) {
    std::fprintf(stderr, "mxsched load: %s\n", std::string(report.status().message()).c_str());
    return 2;
  }
  std::printf("%s", report->ToText().c_str());
  if (!json_path.empty() && !WriteFile(json_path, report->ToJson())) {
    std::fprintf(stderr, "mxsched load: cannot write %s\n", json_path.c_str());
    return 1;
  }
  return 0;
}

}  // namespace mxsched::tools
