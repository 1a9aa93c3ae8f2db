// The configuration options: one descriptor per option, the single source of truth from which
// the parser (config.cc) takes names, scopes, types and ranges, `mxsched check` prints the
// effective settings and defaults, and docs/DESIGN.md §4 takes its option table (a test keeps
// that table in sync: ConfigOptions.DesignDocTableIsGeneratedFromTheDescriptors).
//
// Adding an option is one change in two lines:
//   1. Add the typed field, with its default as the member initializer, to DomainSettings
//      (options a Domain stanza may override), HostSettings or Config (config.h).
//   2. Add one row to kOptions in config_options.cc: name (lower-case), scopes, type,
//      range, doc line, and the field(s) it sets: Field<&DomainSettings::x>() and so on.
// The default shown everywhere is read from a default-constructed Config, so it cannot
// drift from the member initializer. Then regenerate the DESIGN.md table (the failing test
// prints it) and read the new value where it is used.
//
// Scope rules: an option valid in global and Domain scope sets the global DomainSettings
// (Config::global) at global scope, which every domain without its own value inherits. An
// option with a Config field (global-only value) sets that field at global scope instead.
//
// Thread-safety: the table is immutable; every function here is safe to call concurrently.
#ifndef MXSCHED_SCHEDULER_CONFIG_OPTIONS_H_
#define MXSCHED_SCHEDULER_CONFIG_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/endpoint.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/routes.h"

namespace mxsched {

// kBindingScope: Binding and Binding_Group stanzas; kBindingDomainScope and
// kBindingHostScope: Domain and Host stanzas inside a Binding (docs/DESIGN.md §4, Bindings).
enum OptionScope : unsigned {
  kGlobalScope = 1,
  kDomainScope = 2,
  kHostScope = 4,
  kBindingScope = 8,
  kBindingDomainScope = 16,
  kBindingHostScope = 32,
};

enum class OptionType {
  kCount,     // integer
  kSeconds,   // duration: seconds, or with a unit suffix s/m/h/d
  kPort,      // integer 1..65535
  kBool,      // true/false/yes/no/on/off/1/0
  kChoice,    // one word of OptionDescriptor::choices
  kRoutes,    // list of route items (routes.h)
  kCidrList,  // list of CIDR ranges
  kNameList,  // list of host names or name patterns ("*.example")
  kRedisUrl,  // "redis://HOST:PORT[/DB]" (redis_url.h), or "" for none
  kName,      // 1..64 of [A-Za-z0-9_.-]: a name that goes into keys and channels
  kBindAddress,  // "ADDRESS" or ( "V4" "V6" ): at most one per family; "*" = kernel's choice
  kThrottle,     // "N" or "N/S" (config.h ThrottleSpec), or "" for none
};

// A typed option value, as parsed or as read back from a Config. Only the member matching
// the option's type is meaningful. `present` is false for an unset optional Host field.
struct OptionValue {
  bool present = true;
  int64_t number = 0;
  bool flag = false;
  std::string text;
  std::vector<RouteItem> routes;
  std::vector<Cidr> cidrs;
  std::vector<std::string> names;
  std::vector<IpAddress> addresses;
  ThrottleSpec throttle;
};

// Reads and writes one field of one settings struct.
template <typename Settings>
struct FieldAccess {
  void (*set)(Settings&, const OptionValue&) = nullptr;
  OptionValue (*get)(const Settings&) = nullptr;
  explicit operator bool() const { return set != nullptr; }
};

struct OptionDescriptor {
  std::string_view name;  // lower-case; the parser matches case-insensitively
  unsigned scopes;        // OptionScope bits
  OptionType type;
  int64_t min = 0;  // inclusive range for kCount, kSeconds and kPort
  int64_t max = 0;
  std::string_view choices = {};            // kChoice: the accepted words, separated by '|'
  std::string_view doc = {};                // one line for `mxsched check` and docs/DESIGN.md §4
  FieldAccess<Config> config = {};          // global-only value, or unset
  FieldAccess<DomainSettings> domain = {};  // global default + Domain override, or unset
  FieldAccess<HostSettings> host = {};      // Host stanza value, or unset
};

// Every option, in documentation order.
std::span<const OptionDescriptor> ConfigOptions();
// The descriptor for a lower-case option name, or nullptr.
const OptionDescriptor* FindConfigOption(std::string_view lower_name);

// Parses one scalar option value (kCount, kSeconds, kPort, kBool, kChoice) and checks its
// range. The error says what was expected ("option "x" expects a duration ... in 1..3600");
// the caller prefixes FILE:LINE:COL.
absl::StatusOr<OptionValue> ParseScalarOption(const OptionDescriptor& option,
                                              std::string_view text);

// A bind_address value: its items ("*" alone = none). At most one address per family.
absl::StatusOr<std::vector<IpAddress>> ParseBindAddress(const std::vector<std::string>& items);

// The value in config syntax, so that it parses back to the same value: 300s, true,
// "esmtp", ( "a" "b" ).
std::string FormatOptionValue(const OptionDescriptor& option, const OptionValue& value);

// The value the option has at global scope (for kHostScope-only options: none).
std::optional<OptionValue> GlobalOptionValue(const OptionDescriptor& option, const Config& c);

enum class ConfigListing {
  kEffective,   // every global option with its effective value, then the stanzas
  kNonDefault,  // only global options that differ from the default, then the stanzas
  kDefaults,    // the defaults (ignores the given config), no stanzas
};
// Renders settings in config syntax, like `postconf` (-n: kNonDefault, -d: kDefaults), each
// line annotated with "# default" where the value is the default. Domain and Host stanzas
// list only the values they change (a Domain stanza: those that differ from the global
// value it would otherwise inherit). The output parses back to an equal Config.
std::string ListConfig(const Config& config, ConfigListing listing);

// The Markdown table of options (name, scopes, type and range, default, meaning) that
// docs/DESIGN.md §4 carries between its options markers.
std::string ConfigOptionsMarkdown();

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_CONFIG_OPTIONS_H_
