// dverbsd start-up, accept loop and shutdown; `dverbsd --stat`.
//
// Threads: the main thread runs run(): it blocks SIGTERM/SIGINT before any thread exists
// (so every thread inherits the mask and the signals arrive only through the signalfd),
// probes the drivers, registers the midlayer client, starts the doorbell, opens one socket
// per device and then polls the listening sockets and the signalfd. Each accepted
// connection gets its session thread (session.cc). Finished sessions are joined by the
// main thread (reap); on shutdown every connection is shut down and joined, which destroys
// everything the clients owned, before the client is unregistered and the drivers stop.
//
// Locking: conns_mu_ guards conns_ (main thread, client remove callbacks). devs_ is written
// by the client add callback during register_client and read by the main thread after it.
#include "daemon/server.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cm/daemon_proto.h"
#include "cm/internal.h"
#include "daemon/cm_session.h"
#include "daemon/internal.h"

namespace dverbs::daemon {

namespace {

Server* g_server = nullptr;  // the midlayer client callbacks carry no context of ours

void on_sigusr1(int) {}  // interrupts a session's bounded eventfd write (session.cc)

}  // namespace

Server::Server(const Options& opts) : opts_(opts) {}

Server::~Server() {
  delete db_snap_.load(std::memory_order_relaxed);
  for (DevCtx* d : devs_) delete d;
}

void Server::client_add(mid::Device* dev, mid::Client*) {
  auto* d = new DevCtx();
  d->dev = dev;
  d->index = unsigned(g_server->devs_.size());
  g_server->devs_.push_back(d);
}

void Server::client_remove(mid::Device* dev, mid::Client*, void*) {
  g_server->stop_device(dev);
}

// Device and port events go to every connection of the device. Handler thread: never sleeps.
void Server::device_event(const mid::Event& ev, void* context) {
  const mid::EventElement el = mid::event_element(ev.type);
  // QP/CQ/SRQ events reach their object's handler.
  if (el != mid::EventElement::device && el != mid::EventElement::port) return;
  auto* d = static_cast<DevCtx*>(context);
  const uint32_t port = el == mid::EventElement::port ? ev.element.port_num : 0;
  d->conns_lock.lock();
  for (Conn* c = d->conns; c; c = c->dev_next)
    g_server->raise_event(*c, EventKind::async, ev.type, 0, port);
  d->conns_lock.unlock();
}

int Server::open_socket(DevCtx& d) {
  d.path = opts_.dir + "/" + kSocketPrefix + std::to_string(d.index);
  d.listen_fd = listen_on(d.path);
  return d.listen_fd < 0 ? -1 : 0;
}

int Server::listen_on(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    std::fprintf(stderr, "dverbsd: socket path too long: %s\n", path.c_str());
    return -1;
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  // A live daemon on this path keeps it; a stale file is removed.
  int probe = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (probe >= 0) {
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    ::close(probe);
    if (live) {
      std::fprintf(stderr, "dverbsd: %s is served by another running dverbsd\n", path.c_str());
      return -1;
    }
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    std::fprintf(stderr, "dverbsd: cannot remove stale %s: %s\n", path.c_str(),
                 std::strerror(errno));
    return -1;
  }
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    std::fprintf(stderr, "dverbsd: socket: %s\n", std::strerror(errno));
    return -1;
  }
  // Created owner-only, then opened up to the configured mode: never wider in between.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int err = errno;
  ::umask(old);
  const char* what = "bind";
  if (rc == 0) {
    what = "chmod";
    rc = ::chmod(path.c_str(), opts_.mode);
    err = errno;
  }
  if (rc == 0 && opts_.set_group) {
    what = "chown";
    rc = ::chown(path.c_str(), uid_t(-1), opts_.gid);
    err = errno;
  }
  if (rc == 0) {
    what = "listen";
    rc = ::listen(fd, 128);
    err = errno;
  }
  if (rc != 0) {
    std::fprintf(stderr, "dverbsd: %s %s: %s\n", what, path.c_str(), std::strerror(err));
    ::close(fd);
    ::unlink(path.c_str());
    return -1;
  }
  return fd;
}

namespace {

// The start time of `pid` (field 22 of /proc/PID/stat, clock ticks after boot), or 0.
uint64_t process_start(pid_t pid) {
  if (pid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return 0;
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and ')'
  if (!p) return 0;
  ++p;
  for (int field = 3; *p; field++) {
    while (*p == ' ') ++p;
    if (field == 22) return std::strtoull(p, nullptr, 10);
    while (*p && *p != ' ') ++p;
  }
  return 0;
}

}  // namespace

void Server::accept_one(DevCtx& d) {
  int fd = ::accept4(d.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  ucred cr{};
  socklen_t len = sizeof cr;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
    ::close(fd);
    return;
  }
  if (over_conn_cap(cr.uid, cr.pid)) {
    // The refusal: a response with seq 0 (no request has it) and the errno, then the close.
    Response r;
    r.status = EMFILE;
    (void)!::send(fd, &r, sizeof r, MSG_DONTWAIT | MSG_NOSIGNAL);
    ::close(fd);
    return;
  }
  auto* c = new (std::nothrow) Conn();
  if (!c) {
    ::close(fd);
    return;
  }
  c->srv = this;
  c->dev = &d;
  c->fd = fd;
  c->pid = cr.pid;
  c->start = process_start(cr.pid);
  c->uid = cr.uid;
  c->gid = cr.gid;
  c->notify_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->notify_fd < 0) {
    std::fprintf(stderr, "dverbsd: client pid %d refused: eventfd: %s\n", int(cr.pid),
                 std::strerror(errno));
    delete c;
    return;
  }
  stats.clients.fetch_add(1, std::memory_order_relaxed);
  try {
    c->thread = std::thread(&Server::session_main, this, c);
  } catch (...) {
    std::fprintf(stderr, "dverbsd: client pid %d refused: cannot start a thread\n", int(cr.pid));
    stats.clients.fetch_sub(1, std::memory_order_relaxed);
    ::close(c->notify_fd);
    delete c;
    return;
  }
  std::lock_guard<std::mutex> g(conns_mu_);
  conns_.push_back(c);
}

// True when `uid` already holds --max-conns live connections (logged at most once a second).
bool Server::over_conn_cap(uid_t uid, pid_t pid) {
  uint32_t n = 0;
  {
    std::lock_guard<std::mutex> g(conns_mu_);
    for (const Conn* c : conns_) n += c->uid == uid && !c->done.load(std::memory_order_acquire);
  }
  if (n < opts_.limits.max_conns) return false;
  if (once_a_second(&refused_log_ns_)) {
    std::fprintf(stderr,
                 "dverbsd: client pid %d refused: uid %u already has %u connections "
                 "(--max-conns %u)\n",
                 int(pid), unsigned(uid), n, opts_.limits.max_conns);
  }
  stats.refused_conns.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// Joins finished sessions; with `all`, shuts every connection down first and joins all.
void Server::accept_cm() {
  const int fd = ::accept4(cm_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  auto* c = new (std::nothrow) CmConn();
  if (!c) {
    ::close(fd);
    return;
  }
  c->fd = fd;
  c->thread = std::thread([c] {
    serve_cm_connection(c->fd);
    c->done.store(true, std::memory_order_release);
  });
  cm_conns_.push_back(c);
}

void Server::reap_cm(bool all) {
  for (auto it = cm_conns_.begin(); it != cm_conns_.end();) {
    CmConn* c = *it;
    if (all && !c->done.load(std::memory_order_acquire)) ::shutdown(c->fd, SHUT_RDWR);
    if (all || c->done.load(std::memory_order_acquire)) {
      c->thread.join();
      delete c;
      it = cm_conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void Server::reap(bool all) {
  std::vector<Conn*> gone;
  {
    std::lock_guard<std::mutex> g(conns_mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      Conn* c = *it;
      if (all) ::shutdown(c->fd, SHUT_RDWR);
      if (all || c->done.load(std::memory_order_acquire)) {
        gone.push_back(c);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Conn* c : gone) {
    c->thread.join();
    if (!c->leak) delete c;
  }
}

// The device goes away (client remove): stop serving it and destroy its clients' objects.
void Server::stop_device(mid::Device* dev) {
  DevCtx* d = nullptr;
  for (DevCtx* x : devs_)
    if (x->dev == dev) d = x;
  if (!d) return;
  if (d->listen_fd >= 0) {
    ::close(d->listen_fd);
    d->listen_fd = -1;
    ::unlink(d->path.c_str());
  }
  std::vector<Conn*> gone;
  {
    std::lock_guard<std::mutex> g(conns_mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if ((*it)->dev == d) {
        ::shutdown((*it)->fd, SHUT_RDWR);
        gone.push_back(*it);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (Conn* c : gone) {
    c->thread.join();
    if (!c->leak) delete c;
  }
}

int Server::run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sfd = ::signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) {
    std::fprintf(stderr, "dverbsd: signalfd: %s\n", std::strerror(errno));
    return 1;
  }
  ::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_sigusr1;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: the signal must interrupt the write
  ::sigaction(SIGUSR1, &sa, nullptr);

  if (::mkdir(opts_.dir.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "dverbsd: cannot create %s: %s\n", opts_.dir.c_str(),
                 std::strerror(errno));
    return 1;
  }
  struct stat st;
  if (::stat(opts_.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    std::fprintf(stderr, "dverbsd: %s is not a directory\n", opts_.dir.c_str());
    return 1;
  }

  if (int rc = mid::probe_drivers()) {
    std::fprintf(stderr, "dverbsd: cannot start the soft HCA: %s\n", std::strerror(rc));
    return 1;
  }
  g_server = this;
  client_.name = "dverbsd";
  client_.add = client_add;
  client_.remove = client_remove;
  if (int rc = mid::register_client(&client_)) {
    std::fprintf(stderr, "dverbsd: register_client: %s\n", std::strerror(rc));
    mid::shutdown_drivers();
    return 1;
  }
  int exit_code = 0;
  if (devs_.empty()) {
    std::fprintf(stderr,
                 "dverbsd: no device to serve (configure a port: DVERBS_PORT, DVERBS_IP, ...)\n");
    exit_code = 1;
  }

  db_snap_.store(new DbSet(), std::memory_order_release);
  if (!exit_code) db_thread_ = std::thread(&Server::doorbell_main, this);

  for (DevCtx* d : devs_) {
    if (exit_code) break;
    if (open_socket(*d) != 0) {
      exit_code = 1;
      break;
    }
    d->handler_registered = mid::register_event_handler(d->dev, device_event, d) == 0;
    std::printf("dverbsd: serving %s on %s\n", d->dev->name, d->path.c_str());
    std::fflush(stdout);
  }

  // The connection manager of every port (lib/cm: QP1 is the daemon's), for clients'
  // rdma_cm. Without it the verbs still work; rdma_cm calls then fail with EOPNOTSUPP.
  if (!exit_code) {
    cm_path_ = opts_.dir + "/" + cm::kCmSocket;
    cm_fd_ = listen_on(cm_path_);
    if (cm_fd_ >= 0) {
      dvcm_local_start();  // QP1 answers peers (REJ, SIDR_REP) before any client asks
      std::printf("dverbsd: serving rdma_cm on %s\n", cm_path_.c_str());
      std::fflush(stdout);
    }
  }

  if (!exit_code) {
    std::printf("dverbsd: ready\n");
    std::fflush(stdout);
    std::vector<pollfd> pfds;
    for (;;) {
      pfds.clear();
      pfds.push_back({sfd, POLLIN, 0});
      for (DevCtx* d : devs_)
        if (d->listen_fd >= 0) pfds.push_back({d->listen_fd, POLLIN, 0});
      if (cm_fd_ >= 0) pfds.push_back({cm_fd_, POLLIN, 0});
      int r = ::poll(pfds.data(), pfds.size(), 200);
      if (r < 0 && errno != EINTR) break;
      if (r > 0) {
        if (pfds[0].revents & POLLIN) {
          signalfd_siginfo si;
          ssize_t n = ::read(sfd, &si, sizeof si);
          (void)n;
          std::fprintf(stderr, "dverbsd: %s, shutting down\n", strsignal(int(si.ssi_signo)));
          break;
        }
        for (size_t i = 1; i < pfds.size(); i++) {
          if (!(pfds[i].revents & POLLIN)) continue;
          if (pfds[i].fd == cm_fd_) accept_cm();
          for (DevCtx* d : devs_)
            if (d->listen_fd == pfds[i].fd) accept_one(*d);
        }
      }
      reap(false);
      reap_cm(false);
    }
  }

  // Shutdown: stop accepting, close every connection (destroying its objects), then the
  // midlayer client, the doorbell and the drivers.
  for (DevCtx* d : devs_)
    if (d->listen_fd >= 0) {
      ::close(d->listen_fd);
      d->listen_fd = -1;
    }
  if (cm_fd_ >= 0) {
    ::close(cm_fd_);
    ::unlink(cm_path_.c_str());
    cm_fd_ = -1;
  }
  reap_cm(true);  // their identifiers go before the ports do
  reap(true);
  for (DevCtx* d : devs_)
    if (d->handler_registered) {
      mid::unregister_event_handler(d->dev, device_event, d);
      d->handler_registered = false;
    }
  mid::unregister_client(&client_);
  db_stop_.store(true, std::memory_order_relaxed);
  if (db_thread_.joinable()) db_thread_.join();
  mid::shutdown_drivers();
  for (DevCtx* d : devs_)
    if (!d->path.empty()) ::unlink(d->path.c_str());
  ::close(sfd);
  g_server = nullptr;
  return exit_code;
}

int run_daemon(const Options& opts) {
  Server s(opts);
  return s.run();
}

// ---------------------------------------------------------------- dverbsd --stat

namespace {

// One command; descriptors that come back are closed. Returns 0 or an errno.
int stat_call(int fd, Request& req, Response* resp) {
  req.magic = kMagic;
  ssize_t n;
  do {
    n = ::send(fd, &req, sizeof req, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != ssize_t(sizeof req)) return n < 0 ? errno : EIO;
  iovec iov{resp, sizeof *resp};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 8)];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  do {
    n = ::recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      ::close(f);
    }
  }
  if (n != ssize_t(sizeof *resp)) return n < 0 ? errno : EPROTO;
  return resp->status;
}

}  // namespace

int print_stats(const char* socket_path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (std::strlen(socket_path) >= sizeof sa.sun_path) {
    std::fprintf(stderr, "dverbsd: socket path too long: %s\n", socket_path);
    return 1;
  }
  std::strcpy(sa.sun_path, socket_path);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::fprintf(stderr, "dverbsd: cannot connect to %s: %s\n", socket_path, std::strerror(errno));
    if (fd >= 0) ::close(fd);
    return 1;
  }
  Request req;
  Response resp;
  req.cmd = Cmd::hello;
  req.seq = 1;
  req.hello.version = kVersion;
  int rc = stat_call(fd, req, &resp);
  if (rc == 0) {
    Request sreq;
    sreq.cmd = Cmd::stats;
    sreq.seq = 2;
    rc = stat_call(fd, sreq, &resp);
  }
  ::close(fd);
  if (rc != 0) {
    std::fprintf(stderr, "dverbsd: %s: %s\n", socket_path, std::strerror(rc));
    return 1;
  }
  const Stats& s = resp.stats;
  const struct {
    const char* key;
    uint64_t v;
  } rows[] = {
      {"clients", s.clients},
      {"pds", s.pds},
      {"mrs", s.mrs},
      {"cqs", s.cqs},
      {"qps", s.qps},
      {"srqs", s.srqs},
      {"ahs", s.ahs},
      {"mws", s.mws},
      {"pinned_bytes", s.pinned_bytes},
      {"bad_commands", s.bad_commands},
      {"bad_wqes", s.bad_wqes},
      {"corrupt_rings", s.corrupt_rings},
      {"wqes_posted", s.wqes_posted},
      {"cqes_delivered", s.cqes_delivered},
      {"events_delivered", s.events_delivered},
      {"events_dropped", s.events_dropped},
      {"refused_conns", s.refused_conns},
  };
  for (const auto& r : rows) std::printf("%s=%" PRIu64 "\n", r.key, r.v);
  return 0;
}

}  // namespace dverbs::daemon
