// `mxsched check`: validates a configuration file and prints the effective settings in config
// syntax, like Postfix's postconf (-n: only what differs from the default; -d: the defaults).
//
//   mxsched check --config FILE [-n]     exit 0 valid, 2 invalid (FILE:LINE:COL: what)
//   mxsched check -d                     the default of every option
#include <cstdio>
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

int RunCheck(const CheckFlags& f) {
  if (f.defaults) {
    std::printf("%s", ListConfig(Config{}, ConfigListing::kDefaults).c_str());
    return 0;
  }
  if (f.config_path.empty()) return UsageError("check: --config FILE is required (or -d)");
  std::optional<Config> config = LoadConfigOrSay(f.config_path);
  if (!config) return 2;
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
