// The mxsched subcommands and how they plug into the command line (CLI11, Debian
// libcli11-dev: per-subcommand --help with defaults, --version and errors that name the flag,
// which ~250 lines of hand-written argument loops did not give).
//
// Each subcommand has one SetUp function that declares its flags on the CLI11 subcommand it
// is given — each flag bound to a variable the function owns (a shared_ptr'd struct captured
// by the returned closure) — and returns the closure that runs the command once the command
// line has parsed. The closure returns the process exit code: 0 success, 1 the operation ran
// but found a problem, 2 usage or configuration error. main() (tools/mxsched.cc) walks
// kCommands, so:
//   - a new flag: one `sub.add_option(...)` line in that command's SetUp function (give it a
//     description; defaults are shown by --help automatically);
//   - a new subcommand: write `CommandRun SetUpFooCommand(CLI::App& sub)` in its own
//     tools/foo.cc, declare it below, add a row to kCommands, add the file to the
//     mxsched_cli target in CMakeLists.txt.
// Not thread-safe: everything here runs on the main thread.
#ifndef MXSCHED_TOOLS_COMMANDS_H_
#define MXSCHED_TOOLS_COMMANDS_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "mxsched/scheduler/config.h"

namespace mxsched::tools {

using CommandRun = std::function<int()>;

// Replaces `path` with `text` + "\n" atomically and safely: a temporary file made by mkstemp
// (O_EXCL, random name, same directory) renamed over it, removed on any failure; a symlink
// planted at a predictable name is never followed. False on failure (errno says why).
bool ReplaceFile(const std::string& path, const std::string& text);

CommandRun SetUpCheckCommand(CLI::App& sub);
CommandRun SetUpRouteCommand(CLI::App& sub);
CommandRun SetUpLoadCommand(CLI::App& sub);
CommandRun SetUpFarmCommand(CLI::App& sub);
CommandRun SetUpDemoCommand(CLI::App& sub);
CommandRun SetUpTopCommand(CLI::App& sub);

struct CommandEntry {
  const char* name;
  const char* description;  // one line, shown by `mxsched --help`
  CommandRun (*set_up)(CLI::App& sub);
};

inline constexpr CommandEntry kCommands[] = {
    {"check", "Validate a configuration file and print its effective settings", SetUpCheckCommand},
    {"route", "Show how domains route: tiers, hosts, limits, state", SetUpRouteCommand},
    {"load", "Run sessions against real SMTP servers and report rate, latency, outcomes",
     SetUpLoadCommand},
    {"farm", "Run an SMTP sink on loopback addresses with injectable faults (a test peer)",
     SetUpFarmCommand},
    {"demo", "Measure a global route against MX spread on an in-process farm", SetUpDemoCommand},
    {"top", "Live view of a running worker through its admin endpoint", SetUpTopCommand},
};

// Prints "mxsched: WHY" to stderr and returns 2 (a usage error found after parsing).
int UsageError(std::string_view why);
// LoadConfigFile, with the error ("mxsched: FILE:LINE:COL: ...") or each warning
// ("mxsched: warning: ...") printed to stderr, escaped. Null after an error (exit 2).
std::optional<Config> LoadConfigOrSay(const std::string& path);
// "mxsched: unknown subcommand "WORD"; did you mean "check"? (subcommands: ...)" on
// stderr, the suggestion only when WORD is close to one; returns 2.
int UnknownSubcommand(std::string_view word);
// "HOST[:PORT][,HOST[:PORT]...]" with HOST a name, an IPv4 address or [IPv6] (port 53 when
// not given) -> the "ADDR:PORT,..." form DnsClient::Create takes. Names are looked up with
// the system resolver (getaddrinfo), once, here.
absl::StatusOr<std::string> ResolveDnsServers(std::string_view spec);
// Raises RLIMIT_NOFILE's soft limit to the hard limit (load and farm hold many sockets).
void RaiseFdLimit();
// Installs SIGINT/SIGTERM handlers that set the returned flag.
const volatile bool* InstallStopSignals();

}  // namespace mxsched::tools

#endif  // MXSCHED_TOOLS_COMMANDS_H_
