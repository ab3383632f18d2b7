// The cell table of BRNNSEG_FOR_EACH_CELL (include/brnnseg/cell/cells.h), exported so Python reads
// the cells and their sizes from the C++ that runs them instead of copying them:
//   torch.ops.brnnseg.cells() -> ["gru", "lstm", ...]
//   torch.ops.brnnseg.cell_spec(cell) -> [gates G, saved slots S, cell-state slot (-1: none),
//                                         recurrent-side gradient differs (0/1)]
#include <torch/library.h>

#include "brnnseg/static_switch.h"

namespace brnnseg {
namespace {

std::vector<std::string> cells() {
  std::vector<std::string> out;
  for_each_cell([&](auto c) { out.emplace_back(decltype(c)::kName); });
  return out;
}

std::vector<int64_t> cell_spec(c10::string_view cell) {
  return CELL_SWITCH("brnnseg::cell_spec", cell, Cell, [&] {
    return std::vector<int64_t>{Cell::kGates, Cell::kSaved, Cell::kCellSlot, Cell::kSplitRecurrentGrad ? 1 : 0};
  });
}

}  // namespace
}  // namespace brnnseg

TORCH_LIBRARY_FRAGMENT(brnnseg, m) {
  m.def("cells() -> str[]", &brnnseg::cells);
  m.def("cell_spec(str cell) -> int[]", &brnnseg::cell_spec);
}
