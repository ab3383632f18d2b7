// The cell math's own speed on this CPU: what one hidden unit of one line costs per time step in the
// CPU kernels' vectorised cell steps (cell_steps.h), measured, single-threaded, on a tile in cache.
// It is the second term of the benchmarks' roof (`bench` "roof+cell"): the products at the dot-product
// peak plus the gate math at this rate is a time no kernel of this design can beat.
#pragma once
#include <cstdint>
#include <string>

namespace brnnseg::cpu {

struct CellStepNs {
  double forward;        // ns per unit-step, forward without saving (inference)
  double forward_saved;  // forward that writes the saved slots (training)
  double backward;       // the backward step (gate gradients, bias sums)
};

// About `seconds` in all; `lines` rows of the tile, `hid` units; `bf16_gates`: the forward as bfloat16 ops
// run it (StepArgs::bf16_gates). ValueError-style RuntimeError naming an unknown cell.
CellStepNs cell_step_ns(const std::string& cell, int64_t hid, int64_t lines, double seconds, bool bf16_gates = false);

}  // namespace brnnseg::cpu
