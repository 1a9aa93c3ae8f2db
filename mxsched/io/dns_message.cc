#include "mxsched/io/dns_message.h"

#include <map>

#include "mxsched/base/strings.h"

namespace mxsched::io {
namespace {

class Reader {
 public:
  explicit Reader(std::string_view m) : m_(m) {}

  bool U8(size_t at, uint8_t* v) const {
    if (at >= m_.size()) return false;
    *v = static_cast<uint8_t>(m_[at]);
    return true;
  }
  bool U16(size_t at, uint16_t* v) const {
    if (at + 2 > m_.size()) return false;
    *v =
        static_cast<uint16_t>(static_cast<uint8_t>(m_[at]) << 8 | static_cast<uint8_t>(m_[at + 1]));
    return true;
  }
  bool U32(size_t at, uint32_t* v) const {
    uint16_t hi, lo;
    if (!U16(at, &hi) || !U16(at + 2, &lo)) return false;
    *v = uint32_t{hi} << 16 | lo;
    return true;
  }

  // Reads a possibly compressed name at `at`; sets *next to the byte after it (in the
  // uncompressed stream). Lower-cases; no trailing dot; "" is the root.
  absl::Status Name(size_t at, std::string* out, size_t* next) const {
    out->clear();
    bool jumped = false;
    int jumps = 0;
    size_t pos = at;
    while (true) {
      uint8_t len;
      if (!U8(pos, &len)) return Error(pos, "name runs past the end");
      if ((len & 0xC0) == 0xC0) {
        uint8_t lo;
        if (!U8(pos + 1, &lo)) return Error(pos, "truncated compression pointer");
        if (!jumped) *next = pos + 2;
        jumped = true;
        if (++jumps > 32) return Error(pos, "compression pointer loop");
        const size_t target = (size_t{len & 0x3Fu} << 8) | lo;
        pos = target;
        continue;
      }
      if ((len & 0xC0) != 0) return Error(pos, "reserved label type");
      if (len == 0) {
        if (!jumped) *next = pos + 1;
        return absl::OkStatus();
      }
      if (pos + 1 + len > m_.size()) return Error(pos, "label runs past the end");
      if (!out->empty()) out->push_back('.');
      for (size_t i = 0; i < len; ++i) out->push_back(AsciiLower(m_[pos + 1 + i]));
      if (out->size() > 255) return Error(pos, "name longer than 255 bytes");
      pos += 1 + len;
    }
  }

  static absl::Status Error(size_t at, std::string_view what) {
    return absl::InvalidArgumentError(StrCat("malformed DNS response at byte ", at, ": ", what));
  }

  size_t size() const { return m_.size(); }
  std::string_view bytes(size_t at, size_t n) const { return m_.substr(at, n); }

 private:
  std::string_view m_;
};

struct Record {
  std::string owner;
  uint16_t type;
  uint32_t ttl;
  size_t rdata;
  uint16_t rdlen;
};

}  // namespace

absl::StatusOr<DnsResponse> ParseDnsResponse(std::string_view message, std::string_view qname,
                                             uint16_t qtype) {
  Reader r(message);
  uint16_t flags, qd, an, ns;
  if (!r.U16(2, &flags) || !r.U16(4, &qd) || !r.U16(6, &an) || !r.U16(8, &ns)) {
    return Reader::Error(0, "shorter than a DNS header");
  }
  DnsResponse out;
  if (!(flags & 0x8000)) return Reader::Error(2, "not a response (QR=0)");
  out.truncated = flags & 0x0200;
  out.rcode = flags & 0x000F;
  size_t pos = 12;
  std::string name;
  for (int i = 0; i < qd; ++i) {
    if (absl::Status s = r.Name(pos, &name, &pos); !s.ok()) return s;
    pos += 4;
  }
  if (pos > r.size()) return Reader::Error(pos, "question section runs past the end");
  std::vector<Record> answers, authority;
  for (int section = 0; section < 2; ++section) {
    const int count = section == 0 ? an : ns;
    for (int i = 0; i < count; ++i) {
      Record rec;
      if (absl::Status s = r.Name(pos, &rec.owner, &pos); !s.ok()) return s;
      uint16_t klass;
      if (!r.U16(pos, &rec.type) || !r.U16(pos + 2, &klass) || !r.U32(pos + 4, &rec.ttl) ||
          !r.U16(pos + 8, &rec.rdlen)) {
        return Reader::Error(pos, "truncated resource record header");
      }
      rec.ttl = std::min<uint32_t>(rec.ttl, 0x7FFFFFFF);  // RFC 2181 §8
      rec.rdata = pos + 10;
      if (rec.rdata + rec.rdlen > r.size()) return Reader::Error(pos, "rdata runs past the end");
      pos = rec.rdata + rec.rdlen;
      (section == 0 ? answers : authority).push_back(std::move(rec));
    }
  }
  // Follow the CNAME chain from the query name.
  std::string target = ToLower(qname);
  if (!target.empty() && target.back() == '.') target.pop_back();
  for (bool moved = true; moved;) {
    moved = false;
    for (const Record& rec : answers) {
      if (rec.type != kTypeCname || rec.owner != target || qtype == kTypeCname) continue;
      if (++out.cname_hops > kMaxCnameHops) {
        return Reader::Error(
            rec.rdata, StrCat("CNAME chain longer than ", kMaxCnameHops, " hops (or a loop)"));
      }
      size_t next;
      if (absl::Status s = r.Name(rec.rdata, &target, &next); !s.ok()) return s;
      out.cname_ttl = std::min(out.cname_ttl, rec.ttl);
      moved = true;
      break;
    }
  }
  for (const Record& rec : answers) {
    if (rec.owner != target || rec.type != qtype) continue;
    if (rec.type == kTypeA) {
      if (rec.rdlen != 4) return Reader::Error(rec.rdata, "A record rdata is not 4 bytes");
      auto b = r.bytes(rec.rdata, 4);
      out.addresses.push_back(
          {IpAddress::V4(uint32_t{static_cast<uint8_t>(b[0])} << 24 |
                         uint32_t{static_cast<uint8_t>(b[1])} << 16 |
                         uint32_t{static_cast<uint8_t>(b[2])} << 8 | static_cast<uint8_t>(b[3])),
           rec.ttl});
    } else if (rec.type == kTypeAaaa) {
      if (rec.rdlen != 16) return Reader::Error(rec.rdata, "AAAA record rdata is not 16 bytes");
      std::array<uint8_t, 16> a;
      auto b = r.bytes(rec.rdata, 16);
      for (int i = 0; i < 16; ++i) a[i] = static_cast<uint8_t>(b[i]);
      out.addresses.push_back({IpAddress::V6(a), rec.ttl});
    } else if (rec.type == kTypeMx) {
      uint16_t pref;
      if (rec.rdlen < 3 || !r.U16(rec.rdata, &pref)) {
        return Reader::Error(rec.rdata, "MX rdata too short");
      }
      std::string host;
      size_t next;
      if (absl::Status s = r.Name(rec.rdata + 2, &host, &next); !s.ok()) return s;
      out.mx.push_back({pref, std::move(host), rec.ttl});
    }
  }
  for (const Record& rec : authority) {
    if (rec.type != kTypeSoa) continue;
    // MNAME, RNAME, then SERIAL REFRESH RETRY EXPIRE MINIMUM.
    std::string skip;
    size_t p = rec.rdata;
    if (absl::Status s = r.Name(p, &skip, &p); !s.ok()) return s;
    if (absl::Status s = r.Name(p, &skip, &p); !s.ok()) return s;
    uint32_t minimum;
    if (p + 20 > rec.rdata + rec.rdlen || !r.U32(p + 16, &minimum)) {
      return Reader::Error(rec.rdata, "SOA rdata too short");
    }
    out.negative_ttl = std::min(rec.ttl, minimum);
    out.has_soa = true;
    break;
  }
  return out;
}

}  // namespace mxsched::io
