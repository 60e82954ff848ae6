/* dverbs-mpi-check: an MPI job that checks its own results (issue 19, scripts/fabric).
 *
 *   mpirun ... dverbs-mpi-check [--iters K] [--bytes N]
 *
 * 1. Ping-pong between rank 0 and every other rank in turn: K round trips of N bytes each
 *    way; every byte of every message is checked against a pattern of (sender, receiver,
 *    iteration, offset). Rank 0 prints the median round trip per peer.
 * 2. MPI_Allreduce (MPI_SUM) of a vector of 4096 longs, element i of rank r being
 *    r * 4096 + i: every rank checks every element of the result against the closed form.
 * 3. MPI_Barrier, then rank 0 prints "MPI_CHECK PASS ranks N" (or FAIL naming what
 *    differed). Exit status 0 only on PASS (every rank).
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char pattern(int src, int dst, int iter, size_t off) {
  return (unsigned char)(src * 131 + dst * 31 + iter * 7 + off * 13 + (off >> 8));
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int check(const unsigned char* buf, size_t n, int src, int dst, int iter) {
  for (size_t i = 0; i < n; i++)
    if (buf[i] != pattern(src, dst, iter, i)) {
      fprintf(stderr, "MPI_CHECK FAIL: message %d from rank %d to %d, byte %zu: 0x%02x, expected 0x%02x\n",
              iter, src, dst, i, buf[i], pattern(src, dst, iter, i));
      return 1;
    }
  return 0;
}

int main(int argc, char** argv) {
  int iters = 200;
  size_t bytes = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--bytes")) bytes = strtoul(argv[i + 1], NULL, 0);
  }
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  unsigned char* out = malloc(bytes);
  unsigned char* in = malloc(bytes);
  double* rtt = malloc(sizeof(double) * (size_t)iters);
  int bad = 0;

  /* 1. ping-pong, rank 0 with each peer in turn */
  for (int peer = 1; peer < n; peer++) {
    if (rank != 0 && rank != peer) continue;
    int other = rank == 0 ? peer : 0;
    for (int it = 0; it < iters && !bad; it++) {
      for (size_t i = 0; i < bytes; i++) out[i] = pattern(rank, other, it, i);
      if (rank == 0) {
        double t0 = MPI_Wtime();
        MPI_Send(out, (int)bytes, MPI_BYTE, other, it, MPI_COMM_WORLD);
        MPI_Recv(in, (int)bytes, MPI_BYTE, other, it, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        rtt[it] = (MPI_Wtime() - t0) * 1e6;
      } else {
        MPI_Recv(in, (int)bytes, MPI_BYTE, other, it, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(out, (int)bytes, MPI_BYTE, other, it, MPI_COMM_WORLD);
      }
      bad |= check(in, bytes, other, rank, it);
    }
    if (rank == 0 && !bad) {
      qsort(rtt, (size_t)iters, sizeof(double), cmp_double);
      printf("MPI_PINGPONG rank 0 <-> %d: %d round trips of %zu B verified, median %.1f us, p99 %.1f us\n",
             peer, iters, bytes, rtt[iters / 2], rtt[(size_t)(iters * 0.99)]);
    }
  }

  /* 2. allreduce */
  enum { kLen = 4096 };
  long* v = malloc(sizeof(long) * kLen);
  long* sum = malloc(sizeof(long) * kLen);
  for (int i = 0; i < kLen; i++) v[i] = (long)rank * kLen + i;
  MPI_Allreduce(v, sum, kLen, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  for (int i = 0; i < kLen && !bad; i++) {
    long want = (long)kLen * n * (n - 1) / 2 + (long)n * i;
    if (sum[i] != want) {
      fprintf(stderr, "MPI_CHECK FAIL: allreduce element %d on rank %d: %ld, expected %ld\n", i, rank,
              sum[i], want);
      bad = 1;
    }
  }

  /* 3. every rank's verdict */
  int any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    if (any_bad)
      printf("MPI_CHECK FAIL ranks %d\n", n);
    else
      printf("MPI_CHECK PASS ranks %d: ping-pong with every rank and a %d-element allreduce verified\n",
             n, kLen);
  }
  free(out);
  free(in);
  free(rtt);
  free(v);
  free(sum);
  MPI_Finalize();
  return any_bad;
}
