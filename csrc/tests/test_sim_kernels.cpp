// The CUDA recurrence kernels under the SIMT simulator, without torch: built twice by CMake, plain
// and with -fsanitize=thread (a missing __syncthreads shows up as a data race). Checks the forward
// output against a serial loop over the same cell math, and that both weight paths (shared memory,
// L2) give bit-identical forward and backward results.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "brnnseg/simt_sim.h"
#include "cuda/line_scan_launch.h"

using namespace brnnseg;

static int failures = 0;

template <int G>
static void run_case(int64_t N, int64_t H, int64_t W, int hid, int axis) {
  const SweepGeometry geo{N, H, W, axis};
  const int64_t P = geo.positions(), lines = geo.lines(), T = geo.steps();
  const int Gh = G * hid, S = G == 3 ? 4 : 5;
  std::mt19937 rng(G * 1000 + hid * 10 + axis);
  std::normal_distribution<float> nd(0.f, 0.5f);
  std::vector<float> gx(P * 2 * Gh), w_hh(2 * Gh * hid), w_t(2 * hid * Gh), b_ih(2 * Gh), b_hh(2 * Gh);
  for (auto* v : {&gx, &w_hh, &b_ih, &b_hh})
    for (float& f : *v) f = nd(rng);
  for (int d = 0; d < 2; ++d)
    for (int j = 0; j < Gh; ++j)
      for (int k = 0; k < hid; ++k) w_t[(d * hid + k) * Gh + j] = w_hh[(d * Gh + j) * hid + k];
  // Output (N, 2*hid, H, W) contiguous.
  const int64_t sN = 2 * hid * H * W, sC = H * W, sH = W, sW = 1;

  std::vector<float> y_ref(N * 2 * hid * H * W, 0.f);
  for (int d = 0; d < 2; ++d)
    for (int64_t line = 0; line < lines; ++line) {
      std::vector<float> h(hid, 0.f), c(hid, 0.f), hn(hid);
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = step_time(d, s, T), p = geo.pos(line, t);
        for (int u = 0; u < hid; ++u) {
          float acc[4] = {0, 0, 0, 0};
          for (int g = 0; g < G; ++g)
            for (int k = 0; k < hid; ++k) acc[g] += w_hh[(d * Gh + g * hid + u) * hid + k] * h[k];
          const float* x = &gx[(p * 2 + d) * Gh];
          const float* bi = &b_ih[d * Gh];
          const float* bh = &b_hh[d * Gh];
          if (G == 3) {
            float r, z, n;
            hn[u] = gru_cell_forward(x[u] + bi[u], x[hid + u] + bi[hid + u], x[2 * hid + u] + bi[2 * hid + u],
                                     acc[0] + bh[u], acc[1] + bh[hid + u], acc[2] + bh[2 * hid + u], h[u], r, z, n);
          } else {
            float i, f, gg, o, cc;
            hn[u] = lstm_cell_forward(x[u] + bi[u] + acc[0] + bh[u], x[hid + u] + bi[hid + u] + acc[1] + bh[hid + u],
                                      x[2 * hid + u] + bi[2 * hid + u] + acc[2] + bh[2 * hid + u],
                                      x[3 * hid + u] + bi[3 * hid + u] + acc[3] + bh[3 * hid + u], c[u], i, f, gg, o,
                                      cc);
            c[u] = cc;
          }
        }
        h = hn;
        const int64_t n = p / (H * W), hh = (p / W) % H, ww = p % W;
        for (int u = 0; u < hid; ++u) y_ref[n * sN + (d * hid + u) * sC + hh * sH + ww * sW] = h[u];
      }
    }

  std::vector<float> results[3][4];  // [path][y, dgx, dgh, dgh_first]
  for (int path = 0; path < 3; ++path) {
    // path 0: W_hh in shared memory; 1: through L2; 2: one gate in shared memory, the rest L2.
    auto limit = [&](bool bwd) {
      if (path != 2) return size_t(227 * 1024);
      const int tile = line_scan_config<float>(bwd, G, hid, lines, 1 << 30, true).tile;
      return bwd ? bwd_smem_bytes<float>(G, hid, tile, 1) : fwd_smem_bytes<float>(G, hid, tile, 1);
    };
    std::vector<float> y(y_ref.size(), 0.f), ws(2 * T * lines * S * hid);
    SweepFwdParams<float> fp{geo, hid, 0, 0, gx.data(), w_t.data(), b_ih.data(), b_hh.data(), y.data(), sN, sC, sH, sW,
                             ws.data()};
    const LaunchConfig fc = line_scan_config<float>(false, G, hid, lines, limit(false), path == 1);
    if (path == 2 && fc.smem_gates != 1) {
      std::printf("FAIL partial path planned %d gates\n", fc.smem_gates);
      ++failures;
    }
    SweepBatch<SweepFwdParams<float>> fb;
    fb.sweep[0] = fp;
    set_batch_blocks(fb, fc);
    launch_line_scan_fwd<float>(G, fb, fc, nullptr);
    double err = 0;
    for (size_t i = 0; i < y.size(); ++i) err = std::max(err, double(std::fabs(y[i] - y_ref[i])));
    if (err > 1e-5) {
      std::printf("FAIL forward G=%d hid=%d axis=%d path=%d: max err %g\n", G, hid, axis, path, err);
      ++failures;
    }
    std::vector<float> gy(y.size());
    std::mt19937 rg(7);
    for (float& f : gy) f = nd(rg);
    std::vector<float> dgx(P * 2 * Gh), dgh(P * 2 * Gh), first(2 * lines * Gh);
    SweepBwdParams<float> bp{geo, hid, 0, 0, w_hh.data(), gy.data(), sN, sC, sH, sW, y.data(), sN, sC, sH, sW,
                             ws.data(), dgx.data(), dgh.data(), first.data()};
    const LaunchConfig bc = line_scan_config<float>(true, G, hid, lines, limit(true), path == 1);
    SweepBatch<SweepBwdParams<float>> bb;
    bb.sweep[0] = bp;
    set_batch_blocks(bb, bc);
    launch_line_scan_bwd<float>(G, bb, bc, nullptr);
    results[path][0] = y;
    results[path][1] = dgx;
    results[path][2] = dgh;
    results[path][3] = first;
  }
  for (int path = 1; path < 3; ++path)
    for (int k = 0; k < 4; ++k)
      if (results[0][k] != results[path][k]) {
        std::printf("FAIL G=%d hid=%d axis=%d: weight path %d differs from shared memory (buffer %d)\n", G, hid,
                    axis, path, k);
        ++failures;
      }
}

int main() {
  for (int axis : {2, 3}) {
    run_case<3>(2, 5, 3, 3, axis);   // several lines per CTA, partial tiles
    run_case<4>(1, 4, 6, 5, axis);
    run_case<3>(1, 1, 7, 2, axis);   // T = 1 along one axis
    run_case<4>(1, 3, 2, 33, axis);  // hidden just over a warp
  }
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("simulated CUDA kernels: all checks passed\n");
  return 0;
}
