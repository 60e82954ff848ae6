#include "stat/telemetry_client.h"

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dverbs::stat {

const Json* Json::get(const std::string& key) const {
  for (const auto& [k, v] : object)
    if (k == key) return &v;
  return nullptr;
}

namespace {

void dump_string(const std::string& s, std::string* out) {
  *out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') *out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      *out += b;
      continue;
    }
    *out += c;
  }
  *out += '"';
}

void dump(const Json& j, std::string* out) {
  switch (j.kind) {
    case Json::Kind::null: *out += "null"; break;
    case Json::Kind::number: {
      char b[32];
      std::snprintf(b, sizeof b, "%.17g", j.number);
      *out += b;
      break;
    }
    case Json::Kind::string: dump_string(j.string, out); break;
    case Json::Kind::array:
      *out += '[';
      for (size_t i = 0; i < j.array.size(); i++) {
        if (i) *out += ", ";
        dump(j.array[i], out);
      }
      *out += ']';
      break;
    case Json::Kind::object:
      *out += '{';
      for (size_t i = 0; i < j.object.size(); i++) {
        if (i) *out += ", ";
        dump_string(j.object[i].first, out);
        *out += ": ";
        dump(j.object[i].second, out);
      }
      *out += '}';
      break;
  }
}

struct Parser {
  const std::string& s;
  size_t i = 0;
  std::string err;

  void ws() {
    while (i < s.size() && std::strchr(" \t\r\n", s[i])) i++;
  }
  bool fail(const char* what) {
    if (err.empty()) err = std::string(what) + " at offset " + std::to_string(i);
    return false;
  }
  bool string(std::string* out) {
    if (i >= s.size() || s[i] != '"') return fail("expected a string");
    for (i++; i < s.size() && s[i] != '"'; i++) {
      if (s[i] == '\\' && i + 1 < s.size()) {
        char e = s[++i];
        if (e == 'u' && i + 4 < s.size()) {
          *out += char(std::strtoul(s.substr(i + 1, 4).c_str(), nullptr, 16));
          i += 4;
        } else {
          *out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
      } else {
        *out += s[i];
      }
    }
    if (i >= s.size()) return fail("unterminated string");
    i++;
    return true;
  }
  bool value(Json* out, int depth) {
    if (depth > 16) return fail("nested too deeply");
    ws();
    if (i >= s.size()) return fail("unexpected end");
    char c = s[i];
    if (c == '{') {
      out->kind = Json::Kind::object;
      i++;
      ws();
      if (i < s.size() && s[i] == '}') return ++i, true;
      for (;;) {
        ws();
        std::string key;
        if (!string(&key)) return false;
        ws();
        if (i >= s.size() || s[i] != ':') return fail("expected ':'");
        i++;
        Json v;
        if (!value(&v, depth + 1)) return false;
        out->object.emplace_back(std::move(key), std::move(v));
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == '}') return ++i, true;
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      out->kind = Json::Kind::array;
      i++;
      ws();
      if (i < s.size() && s[i] == ']') return ++i, true;
      for (;;) {
        Json v;
        if (!value(&v, depth + 1)) return false;
        out->array.push_back(std::move(v));
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == ']') return ++i, true;
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      out->kind = Json::Kind::string;
      return string(&out->string);
    }
    if (s.compare(i, 4, "null") == 0) {
      i += 4;
      return true;
    }
    char* end = nullptr;
    double d = std::strtod(s.c_str() + i, &end);
    if (end == s.c_str() + i) return fail("unexpected character");
    out->kind = Json::Kind::number;
    out->number = d;
    i = size_t(end - s.c_str());
    return true;
  }
};

// DPDK's runtime directories this user may have: root's, then $XDG_RUNTIME_DIR's, /tmp's.
std::vector<std::string> runtime_bases() {
  std::vector<std::string> b = {"/var/run/dpdk"};
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) b.push_back(std::string(x) + "/dpdk");
  b.push_back("/tmp/dpdk");
  return b;
}

}  // namespace

std::string Json::dump() const {
  std::string out;
  stat::dump(*this, &out);
  return out;
}

bool parse_json(const std::string& text, Json* out, std::string* err) {
  Parser p{text};
  *out = Json{};
  if (!p.value(out, 0)) {
    *err = p.err;
    return false;
  }
  p.ws();
  if (p.i != text.size()) {
    *err = "trailing characters at offset " + std::to_string(p.i);
    return false;
  }
  return true;
}

TelemetryClient::~TelemetryClient() {
  if (fd_ >= 0) close(fd_);
}

bool TelemetryClient::connect(const std::string& path, std::string* err) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    *err = path + ": path too long";
    return false;
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    *err = path + ": " + std::strerror(errno);
    return false;
  }
  // DPDK greets with {"version": ..., "pid": ..., "max_output_len": ...}.
  char buf[1024];
  if (recv(fd_, buf, sizeof buf, 0) <= 0) {
    *err = path + ": no greeting from the telemetry socket";
    return false;
  }
  return true;
}

bool TelemetryClient::call(const std::string& command, Json* value, std::string* err) {
  if (send(fd_, command.data(), command.size(), 0) != ssize_t(command.size())) {
    *err = command + ": " + std::strerror(errno);
    return false;
  }
  std::string reply(64 * 1024, '\0');
  ssize_t n = recv(fd_, reply.data(), reply.size(), 0);
  if (n <= 0) {
    *err = command + ": no reply";
    return false;
  }
  reply.resize(size_t(n));
  Json all;
  if (!parse_json(reply, &all, err)) return false;
  const std::string key = command.substr(0, command.find(','));
  const Json* v = all.get(key);
  if (!v) {
    *err = command + ": reply without " + key + ": " + reply;
    return false;
  }
  if (v->kind == Json::Kind::null) {
    *err = command + ": the process refused the command (unknown device or QP?)";
    return false;
  }
  *value = *v;
  return true;
}

std::string socket_of(pid_t pid) {
  for (const std::string& base : runtime_bases()) {
    std::string p = base + "/dverbs-" + std::to_string(pid) + "/dpdk_telemetry.v2";
    if (access(p.c_str(), F_OK) == 0) return p;
  }
  return "";
}

bool listener_pid(const std::string& path, pid_t* pid, std::string* err) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    *err = path + ": path too long";
    return false;
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    *err = path + ": " + std::strerror(errno);
    if (fd >= 0) close(fd);
    return false;
  }
  ucred cr{};
  socklen_t len = sizeof cr;
  const int rc = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len);
  const int e = errno;
  close(fd);
  if (rc != 0) {
    *err = path + ": SO_PEERCRED: " + std::strerror(e);
    return false;
  }
  *pid = cr.pid;
  return true;
}

std::vector<std::pair<pid_t, std::string>> find_sockets() {
  std::vector<std::pair<pid_t, std::string>> out;
  for (const std::string& base : runtime_bases()) {
    DIR* d = opendir(base.c_str());
    if (!d) continue;
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, "dverbs-", 7) != 0) continue;
      char* end = nullptr;
      long pid = std::strtol(e->d_name + 7, &end, 10);
      if (*end || pid <= 0) continue;
      const std::string dir = base + "/" + e->d_name, p = dir + "/dpdk_telemetry.v2";
      if (access(p.c_str(), F_OK) != 0) continue;
      if (kill(pid_t(pid), 0) != 0 && errno == ESRCH) {
        // Left by a process that was killed (its exit handler never ran): tidy it away.
        for (const char* s : {"/dpdk_telemetry.v2", "/telemetry"}) unlink((dir + s).c_str());
        rmdir(dir.c_str());
        continue;
      }
      out.emplace_back(pid_t(pid), p);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace dverbs::stat
