// Op schemas, defined once (backends register in cpu/ and cuda/ with TORCH_LIBRARY_IMPL).
// Importing brnnseg_kernels._C loads this library, which registers the ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A module with no methods: importing it only loads the shared library.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(brnnseg, m) {
  // One bidirectional sweep of a GRU (LSTM) along every line of a feature map.
  //   x (N, C, H, W); w_ih (2, G*hid, C); w_hh (2, G*hid, hid); b_* (2, G*hid)
  //   axis 3: along W (rows), 2: along H (cols)
  //   y (N, 2*hid, H, W), channels_last memory when channels_last=True
  //   workspace (2, T, lines, S*hid) when training (saved gates for backward, time-major), else empty
  m.def("bigru_sweep(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training) -> (Tensor y, Tensor workspace)");
  m.def("bigru_sweep_backward(Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, "
        "Tensor workspace, int axis) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def("bilstm_sweep(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training) -> (Tensor y, Tensor workspace)");
  m.def("bilstm_sweep_backward(Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, "
        "Tensor workspace, int axis) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");
  // mode="parallel": the row (axis 3) and column (axis 2) sweeps of the same x in one launch on a GPU.
  //   y (N, 4*hid, H, W) = [row sweep (2*hid) | column sweep (2*hid)]; one workspace per sweep.
  m.def("bigru_sweep_pair(Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor? b_ih_rows, Tensor? b_hh_rows, "
        "Tensor w_ih_cols, Tensor w_hh_cols, Tensor? b_ih_cols, Tensor? b_hh_cols, bool channels_last, "
        "bool training) -> (Tensor y, Tensor workspace_rows, Tensor workspace_cols)");
  m.def("bilstm_sweep_pair(Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor? b_ih_rows, Tensor? b_hh_rows, "
        "Tensor w_ih_cols, Tensor w_hh_cols, Tensor? b_ih_cols, Tensor? b_hh_cols, bool channels_last, "
        "bool training) -> (Tensor y, Tensor workspace_rows, Tensor workspace_cols)");
  m.def("bigru_sweep_pair_backward(Tensor grad_y, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor w_ih_cols, "
        "Tensor w_hh_cols, Tensor y, Tensor workspace_rows, Tensor workspace_cols) -> Tensor[]");
  m.def("bilstm_sweep_pair_backward(Tensor grad_y, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor w_ih_cols, "
        "Tensor w_hh_cols, Tensor y, Tensor workspace_rows, Tensor workspace_cols) -> Tensor[]");

  // Fused segmentation-loss sums over every (sample, channel) plane, in one pass.
  //   logits (N, C, *S), S = (H, W) or (D, H, W); target same shape (bool, uint8, int64 or float);
  //   weight: optional per-pixel weight, shape of logits; pos_weight (C,)
  //   returns sums (N, C, 5): [sum of weighted BCE, counted pixels, sum p*y, sum p (or p^2),
  //   sum y (or y^2)] over pixels whose target != ignore_value. A pixel whose clipped
  //   (2r+1)^d neighbourhood holds foreground (target > 0.5) and background has its BCE
  //   multiplied by 1 + boundary_weight.
  m.def("seg_loss_sums(Tensor logits, Tensor target, Tensor? weight, Tensor pos_weight, "
        "float boundary_weight, int boundary_radius, float? ignore_value, bool squared) -> Tensor");
  // Gradient of sum(grad_sums * sums) with respect to the logits, in one pass.
  m.def("seg_loss_sums_backward(Tensor grad_sums, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor pos_weight, float boundary_weight, int boundary_radius, float? ignore_value, "
        "bool squared) -> Tensor");
}
