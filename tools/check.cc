// `mxsched check`: validates a configuration file and prints the effective settings in config
// syntax, like Postfix's postconf (-n: only what differs from the default; -d: the defaults).
//
//   mxsched check --config FILE [-n]     exit 0 valid, 2 invalid (FILE:LINE:COL: what)
//   mxsched check -d                     the default of every option
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/config_options.h"
#include "tools/commands.h"

namespace mxsched::tools {
namespace {

struct CheckFlags {
  std::string config_path;
  bool non_default = false;
  bool defaults = false;
};

// An error if this machine cannot bind `a` (port 0, as the connector does), else "".
std::string BindProblem(const IpAddress& a) {
  const int fd = socket(a.is_v4() ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::strerror(errno);
  const int one = 1;
  (void)setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  sockaddr_storage ss{};
  const socklen_t len = Endpoint{a, 0}.ToSockaddr(&ss);
  std::string problem;
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) problem = std::strerror(errno);
  close(fd);
  return problem;
}

int RunCheck(const CheckFlags& f) {
  if (f.defaults) {
    std::printf("%s", ListConfig(Config{}, ConfigListing::kDefaults).c_str());
    return 0;
  }
  if (f.config_path.empty()) return UsageError("check: --config FILE is required (or -d)");
  std::optional<Config> config = LoadConfigOrSay(f.config_path);
  if (!config) return 2;
  // Bindings whose source address this machine does not have: a warning here, a local
  // error at connect (docs/DESIGN.md §4 Bindings).
  for (const IpAddress& a : config->bind_address) {
    if (std::string problem = BindProblem(a); !problem.empty()) {
      std::fprintf(stderr,
                   "mxsched: warning: %s: bind_address %s cannot be bound here (%s); "
                   "connections through the default binding will fail as local errors\n",
                   EchoForError(f.config_path, 4096).c_str(), a.ToString().c_str(), problem.c_str());
    }
  }
  for (const BindingSpec& b : config->bindings) {
    for (const IpAddress& a : b.bind_address) {
      if (std::string problem = BindProblem(a); !problem.empty()) {
        std::fprintf(stderr,
                     "mxsched: warning: %s: Binding \"%s\": bind_address %s cannot be bound "
                     "here (%s); its connections will fail as local errors\n",
                     b.where.c_str(), b.name.c_str(), a.ToString().c_str(), problem.c_str());
      }
    }
  }
  ConfigListing listing = f.non_default ? ConfigListing::kNonDefault : ConfigListing::kEffective;
  std::printf("%s", ListConfig(*config, listing).c_str());
  return 0;
}

}  // namespace

CommandRun SetUpCheckCommand(CLI::App& sub) {
  auto f = std::make_shared<CheckFlags>();
  CLI::Option* config =
      sub.add_option("--config", f->config_path,
                     "Configuration file to validate; prints its effective settings, defaults "
                     "marked '# default' (exit 2 with FILE:LINE:COL on an error)")
          ->type_name("FILE");
  sub.add_flag("-n", f->non_default, "Print only settings that differ from the defaults")
      ->needs(config);
  sub.add_flag("-d", f->defaults, "Print the default of every option (no --config)")
      ->excludes(config);
  return [f] { return RunCheck(*f); };
}

}  // namespace mxsched::tools
