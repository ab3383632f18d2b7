// THE list of cells: one row per cell. Everything that is instantiated per cell (CPU steps, CUDA
// and simulator kernels, the op dispatch through CELL_SWITCH, the cell table exported to Python)
// expands this list, so a new cell is its header plus one row here. No torch, no CUDA: compiled by
// g++, nvcc and the simulator alike.
#pragma once
#include <string>
#include <string_view>

#include "brnnseg/cell/gru.h"
#include "brnnseg/cell/lstm.h"
#include "brnnseg/cell/rnn.h"

#define BRNNSEG_FOR_EACH_CELL(X) \
  X(GruCell)                     \
  X(LstmCell)                    \
  X(RnnTanhCell) X(RnnReluCell)

namespace brnnseg {

// Calls f(Cell{}) for the cell named `name`; returns false when no cell has that name.
template <typename F>
bool visit_cell(std::string_view name, F&& f) {
#define BRNNSEG_VISIT_CELL_ROW(C) \
  if (name == C::kName) {         \
    f(C{});                       \
    return true;                  \
  }
  BRNNSEG_FOR_EACH_CELL(BRNNSEG_VISIT_CELL_ROW)
#undef BRNNSEG_VISIT_CELL_ROW
  return false;
}

// Calls f(Cell{}) for every cell, in the list's order.
template <typename F>
void for_each_cell(F&& f) {
#define BRNNSEG_EACH_CELL_ROW(C) f(C{});
  BRNNSEG_FOR_EACH_CELL(BRNNSEG_EACH_CELL_ROW)
#undef BRNNSEG_EACH_CELL_ROW
}

// "'gru', 'lstm', ..." for error messages.
inline std::string cell_names() {
  std::string s;
  for_each_cell([&](auto c) { s += (s.empty() ? "'" : ", '") + std::string(decltype(c)::kName) + "'"; });
  return s;
}

}  // namespace brnnseg
