// dverbsd's connection manager socket, DIR/rdma_cm (lib/cm/daemon_proto.h): the daemon
// owns every port's QP1 and runs its clients' rdma_cm calls (cm_session.cc).
#pragma once

namespace dverbs::daemon {

// Serves one client connection until it closes, then destroys what the client had (its
// connections end with DREQ/REJ) and closes fd. Context: the connection's own thread.
void serve_cm_connection(int fd);

}  // namespace dverbs::daemon
