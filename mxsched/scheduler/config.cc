#include "mxsched/scheduler/config.h"

#include "mxsched/base/file.h"

#include <arpa/inet.h>
#include <fnmatch.h>

#include <algorithm>
#include <optional>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config_options.h"
#include "mxsched/scheduler/route_planner.h"

namespace mxsched {
namespace {

// The throttle an outbound_throttle_* option sets in `t`, or null for another option.
ThrottleSpec* ThrottleOf(std::string_view option, Throttles& t) {
  if (option == "outbound_throttle_connections") return &t.connections;
  if (option == "outbound_throttle_messages") return &t.messages;
  return nullptr;
}


// ---------------------------------------------------------------------------------------
// Syntax: text -> tree of entries with positions.

struct Pos {
  int line = 1;
  int col = 1;
};

enum class Tok { kWord, kString, kEquals, kLParen, kRParen, kLBrace, kRBrace, kEnd };

std::string_view TokName(Tok t) {
  switch (t) {
    case Tok::kWord:
      return "a word";
    case Tok::kString:
      return "a quoted string";
    case Tok::kEquals:
      return "'='";
    case Tok::kLParen:
      return "'('";
    case Tok::kRParen:
      return "')'";
    case Tok::kLBrace:
      return "'{'";
    case Tok::kRBrace:
      return "'}'";
    case Tok::kEnd:
      return "end of file";
  }
  return "?";
}

struct Token {
  Tok kind = Tok::kEnd;
  std::string text;
  Pos pos;
};

struct Value {
  bool is_list = false;
  std::vector<std::string> items;  // one item unless is_list
  std::vector<Pos> item_pos;
  Pos pos;
  // Words after a single value on its own line ("2 minutes"): kept so the option's
  // converter can say what it expects, on this line, instead of the next line failing.
  std::vector<std::string> trailing;
};

struct Entry;
struct Stanza {
  std::string kind;  // "domain" or "host" (lower-case)
  std::string name;
  Pos pos;
  std::vector<Entry> entries;
};

struct Entry {
  std::string name;  // lower-case option name
  Pos pos;
  Value value;
  std::unique_ptr<Stanza> stanza;  // set for `Domain "x" { ... }`
};

// PATH_MAX: a real path is shown whole; a hostile one (a command-line argument) is cut.
constexpr size_t kMaxShownPath = 4096;

class Parser {
 public:
  Parser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  absl::StatusOr<std::vector<Entry>> ParseFile() {
    if (absl::Status s = Advance(); !s.ok()) return s;
    std::vector<Entry> entries;
    if (absl::Status s = ParseScope(entries, /*parent=*/""); !s.ok()) return s;
    return entries;
  }

  // Every user-supplied piece of `what` has been through EchoForError (issue 10 #9: a value
  // with ESC, a NUL or a megabyte was echoed as it was); so is the file name, with room for
  // any real path, as it leads the message.
  std::string_view source() const { return source_; }
  absl::Status ErrorAt(Pos p, std::string_view what) const {
    return absl::InvalidArgumentError(
        StrCat(EchoForError(source_, kMaxShownPath), ":", p.line, ":", p.col, ": ", what));
  }

 private:
  // `parent`: the kind of the enclosing stanza ("" at the top). Stanzas nest only as
  // Binding_Group { Binding { Domain/Host { } } }.
  absl::Status ParseScope(std::vector<Entry>& out, std::string_view parent) {
    const bool in_stanza = !parent.empty();
    while (true) {
      if (tok_.kind == Tok::kEnd) {
        if (in_stanza)
          return ErrorAt(tok_.pos, "expected '}' to close the stanza, got end of file");
        return absl::OkStatus();
      }
      if (tok_.kind == Tok::kRBrace) {
        if (!in_stanza) return ErrorAt(tok_.pos, "unexpected '}' outside a stanza");
        return Advance();
      }
      if (tok_.kind != Tok::kWord) {
        return ErrorAt(tok_.pos, StrCat("expected an option name, got ", TokName(tok_.kind)));
      }
      Entry e;
      e.name = ToLower(tok_.text);
      e.pos = tok_.pos;
      if (absl::Status s = Advance(); !s.ok()) return s;
      if (tok_.kind == Tok::kEquals) {
        if (absl::Status s = Advance(); !s.ok()) return s;
        if (absl::Status s = ParseValue(e.value); !s.ok()) return s;
      } else if (tok_.kind == Tok::kString || tok_.kind == Tok::kWord) {
        const bool nests = parent.empty() ||
                           (parent == "binding_group" && e.name == "binding") ||
                           (parent == "binding" && (e.name == "domain" || e.name == "host"));
        if (!nests) {
          return ErrorAt(e.pos, parent == "binding_group" || parent == "binding"
                                    ? StrCat("stanzas cannot be nested here: ", parent,
                                             parent == "binding" ? " holds Domain and Host"
                                                                 : " holds Binding",
                                             " stanzas, not ", EchoForError(e.name))
                                    : std::string("stanzas cannot be nested"));
        }
        auto st = std::make_unique<Stanza>();
        st->kind = e.name;
        st->name = tok_.text;
        st->pos = tok_.pos;
        if (absl::Status s = Advance(); !s.ok()) return s;
        if (tok_.kind != Tok::kLBrace) {
          return ErrorAt(tok_.pos, StrCat("expected '{' after ", EchoForError(e.name), " \"",
                                          EchoForError(st->name), "\", got ", TokName(tok_.kind)));
        }
        if (absl::Status s = Advance(); !s.ok()) return s;
        if (absl::Status s = ParseScope(st->entries, st->kind); !s.ok()) return s;
        e.stanza = std::move(st);
      } else {
        return ErrorAt(tok_.pos, StrCat("expected '=' after option \"", EchoForError(e.name),
                                        "\", got ", TokName(tok_.kind)));
      }
      out.push_back(std::move(e));
    }
  }

  absl::Status ParseValue(Value& v) {
    v.pos = tok_.pos;
    if (tok_.kind == Tok::kString || tok_.kind == Tok::kWord) {
      v.items.push_back(tok_.text);
      v.item_pos.push_back(tok_.pos);
      if (absl::Status s = Advance(); !s.ok()) return s;
      // More words on the value's line that do not start the next option (`b = ...`).
      while ((tok_.kind == Tok::kString || tok_.kind == Tok::kWord) &&
             tok_.pos.line == v.pos.line && !NextIsEquals() && !StartsStanza()) {
        v.trailing.push_back(tok_.text);
        if (absl::Status s = Advance(); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    if (tok_.kind != Tok::kLParen) {
      return ErrorAt(tok_.pos, StrCat("expected a value (string, number or '( list )'), got ",
                                      TokName(tok_.kind)));
    }
    v.is_list = true;
    if (absl::Status s = Advance(); !s.ok()) return s;
    while (tok_.kind == Tok::kString || tok_.kind == Tok::kWord) {
      v.items.push_back(tok_.text);
      v.item_pos.push_back(tok_.pos);
      if (absl::Status s = Advance(); !s.ok()) return s;
    }
    if (tok_.kind != Tok::kRParen) {
      return ErrorAt(tok_.pos, StrCat("expected a list item or ')', got ", TokName(tok_.kind)));
    }
    return Advance();
  }

  // True if the token after the current one is '=' (the lexer's state is restored).
  bool NextIsEquals() {
    const size_t i = i_;
    const Pos pos = pos_;
    Token tok = tok_;
    const bool equals = Advance().ok() && tok_.kind == Tok::kEquals;
    i_ = i;
    pos_ = pos;
    tok_ = std::move(tok);
    return equals;
  }

  // True if the current token starts a stanza: a word, a name, then '{' (`Host "x" {` on
  // the line of a value, as in a one-line Binding). The lexer's state is restored.
  bool StartsStanza() {
    if (tok_.kind != Tok::kWord) return false;
    const size_t i = i_;
    const Pos pos = pos_;
    Token tok = tok_;
    bool stanza = Advance().ok() && (tok_.kind == Tok::kString || tok_.kind == Tok::kWord) &&
                  Advance().ok() && tok_.kind == Tok::kLBrace;
    i_ = i;
    pos_ = pos;
    tok_ = std::move(tok);
    return stanza;
  }

  // Lexer -------------------------------------------------------------------------------
  char Peek(size_t ahead = 0) const { return i_ + ahead < text_.size() ? text_[i_ + ahead] : '\0'; }
  void Bump() {
    if (text_[i_] == '\n') {
      ++pos_.line;
      pos_.col = 1;
    } else {
      ++pos_.col;
    }
    ++i_;
  }
  static bool IsWordChar(char c) {
    return IsAlnum(static_cast<unsigned char>(c)) ||
           std::string_view("_-.:/[]@*+%!?&$^~").find(c) != std::string_view::npos;
  }

  absl::Status Advance() {
    // Skip blanks, commas, semicolons and comments.
    while (i_ < text_.size()) {
      char c = Peek();
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',' || c == ';') {
        Bump();
      } else if (c == '#') {
        while (i_ < text_.size() && Peek() != '\n') Bump();
      } else if (c == '/' && Peek(1) == '*') {
        Pos start = pos_;
        Bump();
        Bump();
        while (i_ < text_.size() && !(Peek() == '*' && Peek(1) == '/')) Bump();
        if (i_ >= text_.size()) return ErrorAt(start, "unterminated /* comment");
        Bump();
        Bump();
      } else {
        break;
      }
    }
    tok_ = Token{};
    tok_.pos = pos_;
    if (i_ >= text_.size()) return absl::OkStatus();
    char c = Peek();
    static constexpr std::string_view kPunct = "=(){}";
    static constexpr Tok kPunctTok[] = {Tok::kEquals, Tok::kLParen, Tok::kRParen, Tok::kLBrace,
                                        Tok::kRBrace};
    if (size_t p = kPunct.find(c); p != std::string_view::npos) {
      tok_.kind = kPunctTok[p];
      Bump();
      return absl::OkStatus();
    }
    if (c == '"') return LexString();
    if (IsWordChar(c)) {
      tok_.kind = Tok::kWord;
      while (i_ < text_.size() && IsWordChar(Peek())) {
        tok_.text.push_back(Peek());
        Bump();
      }
      return absl::OkStatus();
    }
    return ErrorAt(pos_,
                   StrCat("unexpected character '", EchoForError(std::string_view(&c, 1)), "'"));
  }

  absl::Status LexString() {
    Pos start = pos_;
    tok_.kind = Tok::kString;
    Bump();
    while (true) {
      if (i_ >= text_.size()) return ErrorAt(start, "unterminated string");
      char c = Peek();
      if (c == '"') {
        Bump();
        return absl::OkStatus();
      }
      if (c == '\n') return ErrorAt(start, "unterminated string (newline inside quotes)");
      if (c == '\\') {
        Bump();
        if (i_ >= text_.size()) return ErrorAt(start, "unterminated string");
        char e = Peek();
        switch (e) {
          case 'n':
            tok_.text.push_back('\n');
            break;
          case 't':
            tok_.text.push_back('\t');
            break;
          case '"':
          case '\\':
          case '\'':
            tok_.text.push_back(e);
            break;
          default:
            return ErrorAt(
                pos_, StrCat("unknown escape '\\", EchoForError(std::string_view(&e, 1)), "'"));
        }
        Bump();
        continue;
      }
      tok_.text.push_back(c);
      Bump();
    }
  }

  std::string_view text_;
  std::string_view source_;
  size_t i_ = 0;
  Pos pos_;
  Token tok_;
};

// ---------------------------------------------------------------------------------------
// Semantics: entries -> Config.

// Option names, scopes, types and ranges come from the descriptor table (config_options.h).
using Scope = OptionScope;
constexpr Scope kGlobal = kGlobalScope, kDomain = kDomainScope, kHost = kHostScope;

// Longer than any option name by a margin: beyond it no "did you mean" is computed.
constexpr size_t kMaxSuggestFrom = 64;

// The IPv4 address inet_aton (what resolvers and getaddrinfo use) reads in `text`, when it is
// not the canonical dotted quad IpAddress::Parse takes: "127.1", "0x7f000001", "2130706433",
// "127.000.000.001". Only digits, dots and hex digits/x are considered.
std::optional<IpAddress> LooseIpv4(std::string_view text) {
  if (text.empty() || text.size() > 40) return std::nullopt;
  for (char c : text) {
    if (!(IsDigit(c) || c == '.' || c == 'x' || c == 'X' || (c >= 'a' && c <= 'f') ||
          (c >= 'A' && c <= 'F'))) {
      return std::nullopt;
    }
  }
  const std::string s(text);
  in_addr a{};
  if (inet_aton(s.c_str(), &a) == 0) return std::nullopt;
  return IpAddress::V4(ntohl(a.s_addr));
}

std::string ScopeNames(unsigned scopes) {
  std::vector<std::string> names;
  if (scopes & kGlobal) names.push_back("global");
  if (scopes & kDomain) names.push_back("Domain");
  if (scopes & kHost) names.push_back("Host");
  if (scopes & kBindingScope) names.push_back("Binding, Binding_Group");
  if (scopes & kBindingDomainScope) names.push_back("Binding::Domain");
  if (scopes & kBindingHostScope) names.push_back("Binding::Host");
  return Join(names, ", ");
}

class Binder {
 public:
  explicit Binder(const Parser& parser) : parser_(parser) {}

  absl::StatusOr<Config> Bind(const std::vector<Entry>& entries) {
    Config config;
    std::vector<const Stanza*> domains, hosts, bindings;
    std::vector<std::string> seen;
    absl::flat_hash_set<std::string> pattern_keys;
    Pos ttl_pos;  // the later of min_dns_ttl/max_dns_ttl, for the cross-check below
    for (const Entry& e : entries) {
      if (e.stanza) {
        if (e.stanza->kind == "domain") {
          domains.push_back(e.stanza.get());
        } else if (e.stanza->kind == "host") {
          hosts.push_back(e.stanza.get());
        } else if (e.stanza->kind == "binding" || e.stanza->kind == "binding_group") {
          bindings.push_back(e.stanza.get());
        } else {
          return parser_.ErrorAt(e.pos, StrCat("unknown stanza \"", EchoForError(e.name),
                                               "\" (expected Domain, Host, Binding or "
                                               "Binding_Group)"));
        }
        continue;
      }
      absl::StatusOr<OptionValue> v = Check(e, kGlobal, seen);
      if (!v.ok()) return v.status();
      const OptionDescriptor& o = *FindConfigOption(e.name);
      if (o.config) {
        o.config.set(config, *v);
      } else {
        o.domain.set(config.global, *v);
      }
      if (e.name == "min_dns_ttl" || e.name == "max_dns_ttl") ttl_pos = e.value.pos;
    }
    if (config.min_dns_ttl_s > config.max_dns_ttl_s) {
      return parser_.ErrorAt(ttl_pos, StrCat("min_dns_ttl (", config.min_dns_ttl_s,
                                             ") exceeds max_dns_ttl (", config.max_dns_ttl_s, ")"));
    }
    for (const Stanza* st : domains) {
      auto name = NormalizeHostname(st->name);
      if (!name.ok()) {
        return parser_.ErrorAt(st->pos, StrCat("Domain name \"", EchoForError(st->name),
                                               "\": ", ToStd(name.status().message())));
      }
      if (config.domains.contains(*name)) {
        return parser_.ErrorAt(st->pos, StrCat("Domain \"", *name, "\" defined twice"));
      }
      DomainSettings d = config.global;
      d.routes_from_domain = false;
      std::vector<std::string> dseen;
      for (const Entry& e : st->entries) {
        absl::StatusOr<OptionValue> v = Check(e, kDomain, dseen);
        if (!v.ok()) return v.status();
        FindConfigOption(e.name)->domain.set(d, *v);
        if (e.name == "routes") d.routes_from_domain = true;
        if (e.name == "max_outbound_connections") d.limit_from_domain = true;
        if (e.name == "idle_timeout") d.idle_timeout_from_domain = true;
        if (e.name == "max_deliveries_per_connection") d.max_deliveries_from_domain = true;
      }
      config.domains.emplace(*name, std::move(d));
    }
    for (const Stanza* st : hosts) {
      std::string key;
      const bool pattern = st->name.find_first_of("*?") != std::string::npos;
      if (pattern) {
        key = ToLower(st->name);
        if (!ValidNamePattern(key)) {
          return parser_.ErrorAt(st->pos, StrCat("Host \"", EchoForError(st->name),
                                                 "\": a name pattern may "
                                                 "hold hostname characters, '*' and '?', and "
                                                 "at least one literal character"));
        }
      } else if (auto ip = IpAddress::Parse(st->name); ip.ok()) {
        key = ip->ToString();
      } else if (std::optional<IpAddress> loose = LooseIpv4(st->name)) {
        // "127.1", "0x7f000001", "127.000.000.001": a resolver reads these as an address, so
        // taken as a name they left that address unlimited. Refused, not canonicalized:
        // "010.0.0.1" is 8.0.0.1 to inet_aton and 10.0.0.1 to a reader.
        return parser_.ErrorAt(
            st->pos, StrCat("Host \"", EchoForError(st->name),
                            "\": not a canonical IPv4 address (a resolver reads it as ",
                            loose->ToString(), "): write \"", loose->ToString(), "\""));
      } else if (auto name = NormalizeHostname(st->name); name.ok()) {
        key = *name;
      } else {
        return parser_.ErrorAt(st->pos, StrCat("Host \"", EchoForError(st->name),
                                               "\": expected a hostname or an IP address"));
      }
      // A set, not a scan of the patterns so far: 100k pattern stanzas took 13.6 s.
      const bool twice = pattern ? !pattern_keys.insert(key).second : config.hosts.contains(key);
      if (twice) {
        return parser_.ErrorAt(st->pos, StrCat("Host \"", key, "\" defined twice"));
      }
      HostSettings h;
      std::vector<std::string> hseen;
      for (const Entry& e : st->entries) {
        absl::StatusOr<OptionValue> v = Check(e, kHost, hseen);
        if (!v.ok()) return v.status();
        FindConfigOption(e.name)->host.set(h, *v);
      }
      if (pattern && h.throttles.any()) {
        // One throttle per pattern would be a provider-wide rate, one per matching address
        // a rate per host: neither is built yet, and silently ignoring it would be worse.
        return parser_.ErrorAt(st->pos, StrCat("Host \"", key, "\": outbound_throttle_* is not "
                                               "supported in a Host pattern stanza (name an "
                                               "address or an MX name)"));
      }
      if (pattern) {
        config.host_patterns.push_back({std::move(key), h});
      } else {
        config.hosts.emplace(std::move(key), h);
      }
    }
    SortBySpecificity(config.host_patterns);
    for (const Stanza* st : bindings) {
      if (absl::Status s = BindBinding(*st, nullptr, config); !s.ok()) return s;
    }
    // A group with no binding (in any of its declarations) sends nothing anywhere: a session
    // through it could only be deferred as an unknown name. Said at its first declaration.
    for (const Stanza* st : bindings) {
      if (st->kind != "binding_group") continue;
      const BindingGroupSpec* g = config.FindBindingGroup(st->name);
      if (g != nullptr && g->bindings.empty()) {
        return parser_.ErrorAt(st->pos, StrCat("Binding_Group \"", g->name,
                                               "\" holds no Binding (expected at least one "
                                               "Binding \"name\" { } stanza inside it)"));
      }
    }
    // Fall-backs: a binding without an address takes its group's, then the global one; a
    // binding without max_outbound_connections takes its group's.
    for (BindingSpec& b : config.bindings) {
      const BindingGroupSpec* g = b.group.empty() ? nullptr : config.FindBindingGroup(b.group);
      if (b.bind_address.empty() && g != nullptr) b.bind_address = g->bind_address;
      if (b.bind_address.empty()) b.bind_address = config.bind_address;
      if (b.max_outbound_connections == 0 && g != nullptr) {
        b.max_outbound_connections = g->max_outbound_connections;
      }
      // Momentum's binding_group scope: each binding of the group gets the group's rate.
      if (g != nullptr && !b.throttles.connections.set()) b.throttles.connections = g->throttles.connections;
      if (g != nullptr && !b.throttles.messages.set()) b.throttles.messages = g->throttles.messages;
      if (g != nullptr && !b.idle_timeout_s) b.idle_timeout_s = g->idle_timeout_s;
      if (g != nullptr && !b.max_deliveries_per_connection) {
        b.max_deliveries_per_connection = g->max_deliveries_per_connection;
      }
    }
    config.warnings = std::move(warnings_);
    return config;
  }

  // A Binding or Binding_Group stanza (`group`: the enclosing group of a Binding, or null).
  absl::Status BindBinding(const Stanza& st, BindingGroupSpec* group, Config& config) {
    const bool is_group = st.kind == "binding_group";
    const std::string_view what = is_group ? "Binding_Group" : "Binding";
    bool name_ok = !st.name.empty() && st.name.size() <= 64;
    for (char c : st.name) name_ok = name_ok && (IsAlnum(c) || c == '_' || c == '.' || c == '-');
    if (!name_ok) {
      return parser_.ErrorAt(st.pos, StrCat(what, " name \"", EchoForError(st.name),
                                            "\": expected 1..64 of A-Z a-z 0-9 _ . - "
                                            "(names are case-sensitive)"));
    }
    const std::string where = StrCat(EchoForError(parser_.source(), 4096), ":", st.pos.line);
    // One namespace: Acquire takes a binding or a group by name.
    if (is_group ? config.binding_index.contains(st.name)
                 : config.binding_group_index.contains(st.name)) {
      return parser_.ErrorAt(st.pos, StrCat(what, " \"", st.name, "\": a Binding and a "
                                            "Binding_Group cannot share a name"));
    }
    std::vector<std::string> seen;
    if (is_group) {
      // Momentum: a group may be declared several times (include files); its bindings add up.
      BindingGroupSpec* g = nullptr;
      if (auto it = config.binding_group_index.find(st.name);
          it != config.binding_group_index.end()) {
        g = &config.binding_groups[it->second];
      } else {
        config.binding_group_index.emplace(st.name, config.binding_groups.size());
        config.binding_groups.push_back({});
        g = &config.binding_groups.back();
        g->name = st.name;
      }
      for (const Entry& e : st.entries) {
        if (e.stanza) continue;
        absl::StatusOr<OptionValue> v = Check(e, kBindingScope, seen);
        if (!v.ok()) return v.status();
        if (ThrottleSpec* t = ThrottleOf(e.name, g->throttles)) {
          if (t->set()) {
            return parser_.ErrorAt(e.pos, StrCat(e.name, " of Binding_Group \"", g->name,
                                                 "\" set twice"));
          }
          *t = v->throttle;
        } else if (e.name == "idle_timeout" || e.name == "max_deliveries_per_connection") {
          const bool idle = e.name == "idle_timeout";
          if (idle ? g->idle_timeout_s.has_value() : g->max_deliveries_per_connection.has_value()) {
            return parser_.ErrorAt(e.pos, StrCat(e.name, " of Binding_Group \"", g->name,
                                                 "\" set twice"));
          }
          if (idle) {
            g->idle_timeout_s = static_cast<uint32_t>(v->number);
          } else {
            g->max_deliveries_per_connection = static_cast<int32_t>(v->number);
          }
        } else if (e.name == "bind_address") {
          if (!g->bind_address.empty()) {
            return parser_.ErrorAt(e.pos, StrCat("bind_address of Binding_Group \"", g->name,
                                                 "\" set twice"));
          }
          g->bind_address = v->addresses;
        } else if (g->max_outbound_connections != 0) {
          return parser_.ErrorAt(e.pos, StrCat("max_outbound_connections of Binding_Group \"",
                                               g->name, "\" set twice"));
        } else {
          g->max_outbound_connections = static_cast<int32_t>(v->number);
        }
      }
      for (const Entry& e : st.entries) {
        if (!e.stanza) continue;
        // (A Binding adds to config.bindings only, so `g` stays valid.)
        if (absl::Status s = BindBinding(*e.stanza, g, config); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    if (auto it = config.binding_index.find(st.name); it != config.binding_index.end()) {
      const BindingSpec* old = &config.bindings[it->second];
      return parser_.ErrorAt(
          st.pos, old->group.empty() || group == nullptr || old->group == group->name
                      ? StrCat("Binding \"", st.name, "\" defined twice (first at ", old->where, ")")
                      : StrCat("Binding \"", st.name, "\" is in two Binding_Groups: \"",
                               old->group, "\" (", old->where, ") and \"", group->name, "\""));
    }
    BindingSpec b;
    b.name = st.name;
    b.where = where;
    if (group != nullptr) b.group = group->name;
    for (const Entry& e : st.entries) {
      if (e.stanza) {
        const bool domain = e.stanza->kind == "domain";
        std::string key;
        if (domain) {
          auto name = NormalizeHostname(e.stanza->name);
          if (!name.ok()) {
            return parser_.ErrorAt(e.stanza->pos,
                                   StrCat("Domain name \"", EchoForError(e.stanza->name),
                                          "\": ", ToStd(name.status().message())));
          }
          key = *name;
        } else if (auto ip = IpAddress::Parse(e.stanza->name); ip.ok()) {
          key = ip->ToString();
        } else if (auto name = NormalizeHostname(e.stanza->name); name.ok()) {
          key = *name;
        } else {
          return parser_.ErrorAt(e.stanza->pos, StrCat("Host \"", EchoForError(e.stanza->name),
                                                       "\": expected a hostname or an IP "
                                                       "address (no patterns inside a Binding)"));
        }
        auto& limits = domain ? b.domain_limits : b.host_limits;
        if (limits.contains(key) ||
            (domain ? b.domain_throttles : b.host_throttles).contains(key)) {
          return parser_.ErrorAt(e.stanza->pos, StrCat(domain ? "Domain" : "Host", " \"", key,
                                                       "\" defined twice in Binding \"", b.name,
                                                       "\""));
        }
        int32_t limit = 0;
        Throttles rates;
        std::vector<std::string> sseen;
        for (const Entry& x : e.stanza->entries) {
          absl::StatusOr<OptionValue> v =
              Check(x, domain ? kBindingDomainScope : kBindingHostScope, sseen);
          if (!v.ok()) return v.status();
          if (ThrottleSpec* t = ThrottleOf(x.name, rates)) {
            *t = v->throttle;
          } else {
            limit = static_cast<int32_t>(v->number);  // max_outbound_connections
          }
        }
        if (limit == 0 && !rates.any()) {
          return parser_.ErrorAt(e.stanza->pos,
                                 StrCat(domain ? "Domain" : "Host", " \"", key, "\" in Binding \"",
                                        b.name, "\" sets nothing (expected "
                                        "max_outbound_connections or outbound_throttle_*)"));
        }
        if (rates.any()) (domain ? b.domain_throttles : b.host_throttles).emplace(key, rates);
        if (limit != 0) limits.emplace(std::move(key), limit);
        continue;
      }
      absl::StatusOr<OptionValue> v = Check(e, kBindingScope, seen);
      if (!v.ok()) return v.status();
      if (ThrottleSpec* t = ThrottleOf(e.name, b.throttles)) {
        *t = v->throttle;
      } else if (e.name == "idle_timeout") {
        b.idle_timeout_s = static_cast<uint32_t>(v->number);
      } else if (e.name == "max_deliveries_per_connection") {
        b.max_deliveries_per_connection = static_cast<int32_t>(v->number);
      } else if (e.name == "bind_address") {
        b.bind_address = v->addresses;
      } else {
        b.max_outbound_connections = static_cast<int32_t>(v->number);
      }
    }
    if (group != nullptr) group->bindings.push_back(b.name);
    config.binding_index.emplace(b.name, config.bindings.size());
    config.bindings.push_back(std::move(b));
    return absl::OkStatus();
  }

  // Most literal characters first; ties by name, so the order never depends on the file's.
  static void SortBySpecificity(std::vector<HostPattern>& v) {
    auto literal = [](const std::string& p) {
      return std::count_if(p.begin(), p.end(), [](char c) { return c != '*' && c != '?'; });
    };
    std::sort(v.begin(), v.end(), [&](const HostPattern& a, const HostPattern& b) {
      const auto la = literal(a.pattern), lb = literal(b.pattern);
      return la != lb ? la > lb : a.pattern < b.pattern;
    });
  }

 private:
  absl::StatusOr<OptionValue> Check(const Entry& e, Scope scope, std::vector<std::string>& seen) {
    if (e.stanza) return parser_.ErrorAt(e.pos, "stanzas cannot be nested");
    const OptionDescriptor* spec = FindConfigOption(e.name);
    if (spec == nullptr) {
      std::string what = StrCat("unknown option \"", EchoForError(e.name), "\"");
      // The suggestion costs |name| x |option| per option: a word of a megabyte would take
      // seconds, and nothing that long is a typo of an option name anyway.
      if (e.name.size() <= kMaxSuggestFrom) {
        const OptionDescriptor* best = &ConfigOptions()[0];
        size_t best_distance = EditDistance(best->name, e.name);
        for (const auto& o : ConfigOptions()) {
          if (size_t d = EditDistance(o.name, e.name); d < best_distance) {
            best = &o;
            best_distance = d;
          }
        }
        what += StrCat("; did you mean \"", best->name, "\"?");
      }
      return parser_.ErrorAt(e.pos, what);
    }
    if (!(spec->scopes & scope)) {
      return parser_.ErrorAt(e.pos,
                             StrCat("option \"", e.name, "\" is not valid in ", ScopeNames(scope),
                                    " scope (valid in: ", ScopeNames(spec->scopes), ")"));
    }
    if (std::find(seen.begin(), seen.end(), e.name) != seen.end()) {
      return parser_.ErrorAt(e.pos, StrCat("option \"", e.name, "\" set twice in this scope"));
    }
    seen.push_back(e.name);
    return Convert(*spec, e);
  }

  absl::StatusOr<OptionValue> Convert(const OptionDescriptor& spec, const Entry& e) {
    const Value& v = e.value;
    OptionValue out;
    const bool wants_list = spec.type == OptionType::kRoutes ||
                            spec.type == OptionType::kCidrList ||
                            spec.type == OptionType::kNameList;
    if (spec.type == OptionType::kBindAddress) {
      // either form: "ADDRESS" or ( "V4" "V6" )
    } else if (wants_list && !v.is_list) {
      return parser_.ErrorAt(v.pos,
                             StrCat("option \"", e.name, "\" expects a list: ( \"a\" \"b\" )"));
    }
    if (!wants_list && v.is_list && spec.type != OptionType::kBindAddress) {
      return parser_.ErrorAt(v.pos,
                             StrCat("option \"", e.name, "\" expects a single value, not a list"));
    }
    if (spec.type == OptionType::kBindAddress) {
      absl::StatusOr<std::vector<IpAddress>> a = ParseBindAddress(v.items);
      if (!a.ok()) return parser_.ErrorAt(v.pos, ToStd(a.status().message()));
      out.addresses = *std::move(a);
      return out;
    }
    if (spec.type == OptionType::kRoutes) {
      for (size_t i = 0; i < v.items.size(); ++i) {
        auto item = ParseRouteItem(v.items[i]);
        if (!item.ok()) return parser_.ErrorAt(v.item_pos[i], ToStd(item.status().message()));
        if (item->type_mx_ignored) {
          warnings_.push_back(StrCat(
              ToStd(parser_.ErrorAt(v.item_pos[i], "").message()), "\"",
              EchoForError(v.items[i]),
              "\": type=mx on an address is ignored: there is no name whose MX records to "
              "look up, so the address is used as-is (give a host name to use its MXs)"));
        }
        out.routes.push_back(*std::move(item));
      }
      if (out.routes.empty()) return parser_.ErrorAt(v.pos, "routes list is empty");
      // The planner keeps kMaxAddressesPerRoute addresses per route; more items are legal
      // (Momentum accepts them) but the rest can never be used — say so instead of silently.
      if (out.routes.size() > kMaxAddressesPerRoute) {
        warnings_.push_back(StrCat(ToStd(parser_.ErrorAt(v.pos, "").message()), "routes has ",
                                   out.routes.size(), " items; at most ", kMaxAddressesPerRoute,
                                   " addresses of a route are used, the "
                                   "items after that are ignored"));
      }
      AssignTiers(out.routes);
      return out;
    }
    if (spec.type == OptionType::kCidrList) {
      for (size_t i = 0; i < v.items.size(); ++i) {
        auto c = Cidr::Parse(v.items[i]);
        if (!c.ok()) {
          // Cidr::Parse quotes the item as it is; an item that would need escaping or
          // truncating is no address range anyway, so it gets a message built here.
          if (EchoForError(v.items[i]) != v.items[i]) {
            return parser_.ErrorAt(v.item_pos[i],
                                   StrCat("not a CIDR \"", EchoForError(v.items[i]),
                                          "\" (want ADDRESS[/BITS], IPv6 without brackets)"));
          }
          return parser_.ErrorAt(v.item_pos[i], ToStd(c.status().message()));
        }
        out.cidrs.push_back(*c);
      }
      return out;
    }
    if (spec.type == OptionType::kNameList) {
      for (size_t i = 0; i < v.items.size(); ++i) {
        std::string p = ToLower(v.items[i]);
        if (!ValidNamePattern(p)) {
          return parser_.ErrorAt(v.item_pos[i], StrCat("\"", EchoForError(v.items[i]),
                                                       "\" is not a host name or pattern (e.g. "
                                                       "\"*.example\")"));
        }
        out.names.push_back(std::move(p));
      }
      return out;
    }
    if (!v.trailing.empty()) {
      // "host_failure_retry = 2 minutes": the option's own message ("expects a duration
      // (e.g. 30, 90s, 5m) ...") for the whole text, at the value.
      std::string text = v.items[0];
      for (const std::string& w : v.trailing) text += StrCat(" ", w);
      absl::StatusOr<OptionValue> whole = ParseScalarOption(spec, text);
      return parser_.ErrorAt(
          v.pos, whole.ok() ? StrCat("option \"", e.name, "\" expects one value, got \"",
                                     EchoForError(text), "\" (quote a value that has spaces)")
                            : ToStd(whole.status().message()));
    }
    absl::StatusOr<OptionValue> scalar = ParseScalarOption(spec, v.items[0]);
    if (!scalar.ok()) return parser_.ErrorAt(v.pos, ToStd(scalar.status().message()));
    return scalar;
  }

  const Parser& parser_;
  std::vector<std::string> warnings_;
};

}  // namespace

std::vector<RouteItem> DefaultRoutes() { return *ParseRouteList({"__mx__"}); }

std::vector<Cidr> DefaultProhibitedHosts() {
  static constexpr std::string_view kRanges[] = {
      "0.0.0.0/8",     "10.0.0.0/8",     "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
      "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4",   "240.0.0.0/4", "::/128",
      "::1/128",       "::/96",          "fc00::/7",      "fe80::/10",   "ff00::/8",
  };
  std::vector<Cidr> out;
  for (std::string_view r : kRanges) out.push_back(*Cidr::Parse(r));
  return out;
}

const DomainSettings& Config::ForDomain(std::string_view domain) const {
  if (domains.empty()) return global;
  auto it = domains.find(ToLower(domain));
  return it == domains.end() ? global : it->second;
}

const HostSettings* Config::ForHost(std::string_view name_or_ip) const {
  if (hosts.empty()) return nullptr;
  auto it = hosts.find(ToLower(name_or_ip));
  return it == hosts.end() ? nullptr : &it->second;
}

int32_t Config::HostLimit(std::string_view name, const IpAddress& address) const {
  if (const HostSettings* h = ForHost(address.ToString())) return h->max_outbound_connections;
  if (!name.empty()) {
    if (const HostSettings* h = ForHost(name)) return h->max_outbound_connections;
  }
  return kUnlimited;
}

bool ValidNamePattern(std::string_view p) {
  bool literal = false;
  for (char c : p) {
    if (c == '*' || c == '?') continue;
    if (!(IsAlnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_')) {
      return false;
    }
    literal |= c != '.';
  }
  return literal && !p.empty() && p.size() <= 253;
}

bool NamePatternMatches(std::string_view pattern, std::string_view lower_name) {
  // fnmatch(3) without FNM_PERIOD/FNM_PATHNAME: '*' crosses dots, as provider patterns need.
  return fnmatch(std::string(pattern).c_str(), std::string(lower_name).c_str(), 0) == 0;
}

bool HostPattern::Matches(std::string_view lower_name) const {
  return NamePatternMatches(pattern, lower_name);
}

const HostPattern* Config::MatchHostPattern(std::string_view name) const {
  if (name.empty()) return nullptr;
  for (const HostPattern& p : host_patterns) {  // most specific first
    if (p.Matches(name)) return &p;
  }
  return nullptr;
}

const IpAddress* BindingSpec::AddressFor(bool v4) const {
  for (const IpAddress& a : bind_address) {
    if (a.is_v4() == v4) return &a;
  }
  return nullptr;
}

namespace {
// The spec called `name`: through the index when its entry still names it, else a scan.
template <typename Spec>
const Spec* FindByName(const std::vector<Spec>& specs,
                       const absl::flat_hash_map<std::string, uint32_t>& index,
                       std::string_view name) {
  if (auto it = index.find(absl::string_view(name.data(), name.size()));
      it != index.end() && it->second < specs.size() && specs[it->second].name == name) {
    return &specs[it->second];
  }
  for (const Spec& s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}
}  // namespace

const BindingSpec* Config::FindBinding(std::string_view name) const {
  return FindByName(bindings, binding_index, name);
}

const BindingGroupSpec* Config::FindBindingGroup(std::string_view name) const {
  return FindByName(binding_groups, binding_group_index, name);
}

int32_t Config::BindingDomainLimit(const BindingSpec& binding, std::string_view domain) const {
  if (!binding.domain_limits.empty()) {
    auto it = binding.domain_limits.find(std::string(domain));
    if (it != binding.domain_limits.end()) return it->second;
  }
  const DomainSettings& d = ForDomain(domain);
  if (d.limit_from_domain) return d.max_outbound_connections;
  if (binding.max_outbound_connections != 0) return binding.max_outbound_connections;
  return global.max_outbound_connections;
}

int32_t Config::BindingHostLimit(const BindingSpec& binding, std::string_view name,
                                 const IpAddress& address) {
  if (binding.host_limits.empty()) return kUnlimited;
  auto it = binding.host_limits.find(address.ToString());
  if (it == binding.host_limits.end() && !name.empty()) it = binding.host_limits.find(ToLower(name));
  return it == binding.host_limits.end() ? kUnlimited : it->second;
}

const std::string* Config::ProhibitedMxName(std::string_view name) const {
  for (const std::string& p : prohibited_mx_names) {
    if (NamePatternMatches(p, name)) return &p;
  }
  return nullptr;
}

HostPolicy Config::PolicyFor(std::string_view name, const IpAddress& address) const {
  HostPolicy out;
  out.limit = HostLimit(name, address);
  const std::string lower = ToLower(name);
  const HostPattern* pattern = MatchHostPattern(lower);
  if (pattern != nullptr && pattern->settings.max_outbound_connections != kUnlimited) {
    out.provider = pattern;
  }
  // IP stanza, then exact name, then pattern: the first that sets an option wins.
  const HostSettings* chain[3] = {ForHost(address.ToString()),
                                  lower.empty() ? nullptr : ForHost(lower),
                                  pattern ? &pattern->settings : nullptr};
  out.host_failure_retry_s = host_failure_retry_s;
  out.adaptive = adaptive_concurrency;
  out.adaptive_floor = adaptive_concurrency_floor;
  bool retry_set = false, adaptive_set = false, floor_set = false;
  for (const HostSettings* h : chain) {
    if (h == nullptr) continue;
    if (!retry_set && h->host_failure_retry_s) {
      out.host_failure_retry_s = *h->host_failure_retry_s;
      retry_set = true;
    }
    if (!adaptive_set && h->adaptive_concurrency) {
      out.adaptive = *h->adaptive_concurrency;
      adaptive_set = true;
    }
    if (!floor_set && h->adaptive_concurrency_floor) {
      out.adaptive_floor = *h->adaptive_concurrency_floor;
      floor_set = true;
    }
    if (!out.idle_timeout_s) out.idle_timeout_s = h->idle_timeout_s;
    if (!out.max_deliveries_per_connection) {
      out.max_deliveries_per_connection = h->max_deliveries_per_connection;
    }
  }
  return out;
}

ReuseSettings Config::ReuseFor(std::string_view domain, std::string_view binding,
                               const HostPolicy& host) const {
  const DomainSettings& d = ForDomain(domain);
  const BindingSpec* b = binding.empty() ? nullptr : FindBinding(binding);
  ReuseSettings r;
  r.idle_timeout_s = host.idle_timeout_s              ? *host.idle_timeout_s
                     : d.idle_timeout_from_domain     ? d.idle_timeout_s
                     : b != nullptr && b->idle_timeout_s ? *b->idle_timeout_s
                                                      : d.idle_timeout_s;
  r.max_deliveries_per_connection =
      host.max_deliveries_per_connection ? *host.max_deliveries_per_connection
      : d.max_deliveries_from_domain     ? d.max_deliveries_per_connection
      : b != nullptr && b->max_deliveries_per_connection ? *b->max_deliveries_per_connection
                                                         : d.max_deliveries_per_connection;
  return r;
}

absl::StatusOr<Config> ParseConfig(std::string_view text, std::string_view source_name) {
  Parser parser(text, source_name);
  absl::StatusOr<std::vector<Entry>> entries = parser.ParseFile();
  if (!entries.ok()) return entries.status();
  return Binder(parser).Bind(*entries);
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path) {
  // Regular files only, size-capped: a directory used to read as an empty config and
  // /dev/zero as an endless one (Config.LoadConfigFileRefusesDirectoriesDevicesAndHugeFiles).
  absl::StatusOr<std::string> text = ReadInputFile(path);
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path);
}

}  // namespace mxsched
