// The mxsched subcommands. Each takes its arguments (after the command name) and returns the
// process exit code: 0 success, 1 the operation ran but found a problem, 2 usage/config error.
#ifndef MXSCHED_TOOLS_COMMANDS_H_
#define MXSCHED_TOOLS_COMMANDS_H_

#include <string_view>
#include <vector>

namespace mxsched::tools {

using Args = std::vector<std::string_view>;
int RouteCommand(const Args& args);
int FarmCommand(const Args& args);
int LoadCommand(const Args& args);
int DemoCommand(const Args& args);
int UsageError(std::string_view why);
// Raises RLIMIT_NOFILE's soft limit to the hard limit (load and farm hold many sockets).
void RaiseFdLimit();
// Installs SIGINT/SIGTERM handlers that set the returned flag.
const volatile bool* InstallStopSignals();

}  // namespace mxsched::tools

#endif  // MXSCHED_TOOLS_COMMANDS_H_
