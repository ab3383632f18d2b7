// Op schemas, defined once (backends register in cpu/ and cuda/ with TORCH_LIBRARY_IMPL).
// Importing brnnseg_kernels._C loads this library, which registers the ops.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/runtime/buffer_cache.h"
#include "cpu/gemm/fma_peak.h"
#include "cpu/recurrence/cell_step_rate.h"

extern "C" {
static PyObject* release_cpu_buffers(PyObject*, PyObject*) {
  return PyLong_FromLongLong(brnnseg::cpu::release_cached_buffers());
}

static PyObject* cpu_fma_peak_gflops(PyObject*, PyObject* arg) {
  const double seconds = PyFloat_AsDouble(arg);
  if (PyErr_Occurred()) return nullptr;
  double g = 0;
  Py_BEGIN_ALLOW_THREADS
  g = brnnseg::cpu::fma_peak_gflops(seconds);
  Py_END_ALLOW_THREADS
  return PyFloat_FromDouble(g);
}

static PyObject* cpu_bf16_peak_gflops(PyObject*, PyObject* arg) {
  const double seconds = PyFloat_AsDouble(arg);
  if (PyErr_Occurred()) return nullptr;
  double g = 0;
  Py_BEGIN_ALLOW_THREADS
  g = brnnseg::cpu::bf16_dot_peak_gflops(seconds);
  Py_END_ALLOW_THREADS
  return PyFloat_FromDouble(g);
}

// (cell, hidden, lines, seconds[, bf16_gates]) -> (forward, forward with saved slots, backward) ns per
// unit-step; bf16_gates: the forward as bfloat16 ops run it.
static PyObject* cpu_cell_step_ns(PyObject*, PyObject* args) {
  const char* cell = nullptr;
  long long hid = 0, lines = 0;
  double seconds = 0;
  int bf16_gates = 0;
  if (!PyArg_ParseTuple(args, "sLLd|p", &cell, &hid, &lines, &seconds, &bf16_gates)) return nullptr;
  brnnseg::cpu::CellStepNs r{};
  std::string err;
  Py_BEGIN_ALLOW_THREADS
  try {  // (caught inside: the GIL must be taken back before Python sees the error)
    r = brnnseg::cpu::cell_step_ns(cell, hid, lines, seconds, bf16_gates != 0);
  } catch (const c10::Error& e) {
    err = e.what_without_backtrace();
  }
  Py_END_ALLOW_THREADS
  if (!err.empty()) {
    PyErr_SetString(PyExc_ValueError, err.c_str());
    return nullptr;
  }
  return Py_BuildValue("(ddd)", r.forward, r.forward_saved, r.backward);
}

// Importing the module loads the shared library (which registers the ops). Its functions: return
// the CPU kernels' idle cached buffers to the system (cpu/runtime/buffer_cache.h); measure the CPU's FMA
// peak for the benchmarks (cpu/gemm/fma_peak.h).
PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"release_cpu_buffers", release_cpu_buffers, METH_NOARGS,
       "Free the CPU kernels' idle cached buffers; returns the bytes released."},
      {"cpu_fma_peak_gflops", cpu_fma_peak_gflops, METH_O,
       "float32 FMA GFLOP/s of all intra-op threads at once (AVX-512 or AVX2); 0 on other CPUs."},
      {"cpu_bf16_peak_gflops", cpu_bf16_peak_gflops, METH_O,
       "bfloat16 dot-product GFLOP/s of all intra-op threads at once (AVX512-BF16); 0 where bfloat16 products "
       "run in float32."},
      {"cpu_cell_step_ns", cpu_cell_step_ns, METH_VARARGS,
       "(cell, hidden, lines, seconds) -> ns per hidden unit and step of the CPU cell math, single-threaded: "
       "(forward, forward saving for backward, backward)."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(brnnseg, m) {
  // `cell` names a row of BRNNSEG_FOR_EACH_CELL (include/brnnseg/cell/cells.h): "gru", "lstm", ...
  // torch.ops.brnnseg.cells() lists them with their gate (G) and saved-slot (S) counts.
  //
  // sweep: one bidirectional sweep of a cell along every line of a feature map.
  //   x (N, C, H, W); w_ih (2, G*hid, C); w_hh (2, G*hid, hid); b_* (2, G*hid)
  //   axis 3: along W (rows), 2: along H (cols)
  //   y (N, 2*hid, H, W), channels_last memory when channels_last=True
  //   workspace (2, T, lines, S*hid) when training (saved slots for backward, time-major), else empty
  m.def("sweep(str cell, Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training) -> (Tensor y, Tensor workspace)");
  m.def("sweep_backward(str cell, Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, "
        "Tensor workspace, int axis) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");
  // sweep_pair (mode="parallel"): the row (axis 3) and column (axis 2) sweeps of the same x in one
  //   launch on a GPU. y (N, 4*hid, H, W) = [row sweep (2*hid) | column sweep (2*hid)]; one workspace
  //   per sweep.
  m.def("sweep_pair(str cell, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor? b_ih_rows, "
        "Tensor? b_hh_rows, Tensor w_ih_cols, Tensor w_hh_cols, Tensor? b_ih_cols, Tensor? b_hh_cols, "
        "bool channels_last, bool training) -> (Tensor y, Tensor workspace_rows, Tensor workspace_cols)");
  m.def("sweep_pair_backward(str cell, Tensor grad_y, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, "
        "Tensor w_ih_cols, Tensor w_hh_cols, Tensor y, Tensor workspace_rows, Tensor workspace_cols) -> Tensor[]");

  // sequence (the drop-in nn.GRU / nn.LSTM / nn.RNN): one layer, 1 or 2 directions, over a batch of
  // sequences. x (T, B, C), or (B, T, C) when batch_first; w_ih (D, G*hid, C), w_hh (D, G*hid, hid),
  // b_* (D, G*hid); h0/c0 (D, B, hid) or None (zeros; c0 only for cells with a cell state); lengths
  // (B,) int64 on the CPU or None (all T): sequence b runs over t < lengths[b] only (direction 1
  // starts at lengths[b]-1), y is 0 beyond it and h_n/c_n is its state after its last step.
  //   y (T, B, D*hid) or (B, T, D*hid), contiguous; h_n (D, B, hid); c_n (D, B, hid) for cells with
  //   a cell state, else empty; workspace (D, T, B, S*hid) when training (batch sorted by length),
  //   else empty. grad_c0 likewise.
  m.def("sequence(str cell, Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? h0, "
        "Tensor? c0, Tensor? lengths, bool batch_first, bool training) -> (Tensor y, Tensor h_n, Tensor c_n, "
        "Tensor workspace)");
  m.def("sequence_backward(str cell, Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, "
        "Tensor w_ih, Tensor w_hh, Tensor? h0, Tensor? c0, Tensor? lengths, Tensor y, Tensor workspace, "
        "bool batch_first) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
        "Tensor grad_b_hh, Tensor grad_h0, Tensor grad_c0)");

  // The GEMM the CPU kernels use per step (AVX-512 kernel or BLAS, see cpu/gemm/blas.h), over whole
  // matrices: a (M, K) @ b (K, N). For benchmarks (the rate the kernels' GEMMs reach) and tests.
  m.def("kernel_gemm(Tensor a, Tensor b) -> Tensor");

  // Fused segmentation-loss sums over every (sample, channel) plane, in one pass.
  //   logits (N, C, *S), S = (H, W) or (D, H, W); target same shape (bool, uint8, int64 or float);
  //   weight: optional per-pixel weight, shape of logits; pos_weight (C,)
  //   returns sums (N, C, 5): [sum of weighted BCE, counted pixels, sum p*y, sum p (or p^2),
  //   sum y (or y^2)] over pixels whose target != ignore_index. A pixel whose clipped
  //   (2r+1)^d neighbourhood holds foreground (target > 0.5) and background has its BCE
  //   multiplied by 1 + boundary_weight.
  m.def("seg_loss_sums(Tensor logits, Tensor target, Tensor? weight, Tensor pos_weight, "
        "float boundary_weight, int boundary_radius, float? ignore_index, bool squared) -> Tensor");
  // Gradient of sum(grad_sums * sums) with respect to the logits, in one pass.
  m.def("seg_loss_sums_backward(Tensor grad_sums, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor pos_weight, float boundary_weight, int boundary_radius, float? ignore_index, "
        "bool squared) -> Tensor");

  // The whole fused loss (lambda_ce * weighted BCE with boundary weighting + lambda_dice * Dice; the
  // math: brnnseg_kernels/losses/seg_loss.py): the pixel pass of seg_loss_sums, then the loss from the
  // sums, and the factors of its derivative in them (factors: N*C*3 + 1, what the backward reads).
  //   pos_weight (C,), or None and every channel's is pos_weight_value; Dice counts channel c where
  //   c >= dice_from and, given dice_mask (C,), dice_mask[c] != 0; reduction "mean", "sum" or "none"
  //   (loss (N, C)). On CUDA: two launches forward, one backward, no host synchronisation.
  m.def("bce_dice_loss(Tensor logits, Tensor target, Tensor? weight, Tensor? pos_weight, float pos_weight_value, "
        "Tensor? dice_mask, int dice_from, float boundary_weight, int boundary_radius, float? ignore_index, "
        "bool squared, float lambda_ce, float lambda_dice, float smooth_nr, float smooth_dr, bool batch, "
        "bool log_dice, str reduction) -> (Tensor loss, Tensor factors)");
  // Gradient of sum(grad * loss) with respect to the logits, from the forward's factors, in one pass.
  m.def("bce_dice_loss_backward(Tensor grad, Tensor factors, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor? pos_weight, float pos_weight_value, float boundary_weight, int boundary_radius, "
        "float? ignore_index, bool squared, bool batch, str reduction) -> Tensor");

  // Fused multi-class loss sums (softmax cross-entropy + boundary weighting + softmax Dice), one pass.
  //   logits (N, C, *S); target (N, *S) integer labels in [0, C) or ignore_index, or (N, C, *S)
  //   one-hot / soft (floating point); weight: optional per-pixel weight (N, *S); class_weights (C,)
  //   returns dice_sums (N, C, 3): [sum p_c*y_c, sum p_c (or p_c^2), sum y_c (or y_c^2)] and
  //   ce_sums (N, 2): [sum of m * cross-entropy, sum of the normaliser (the label's class weight;
  //   1 for soft targets)] over pixels whose label != ignore_index. m = weight * (1 + boundary_weight
  //   where the clipped (2r+1)^d neighbourhood holds more than one label).
  m.def("ce_dice_sums(Tensor logits, Tensor target, Tensor? weight, Tensor? class_weights, "
        "float boundary_weight, int boundary_radius, int? ignore_index, float label_smoothing, bool squared) "
        "-> (Tensor dice_sums, Tensor ce_sums)");
  // Gradient of sum(grad_dice * dice_sums) + sum(grad_ce * ce_sums) with respect to the logits.
  m.def("ce_dice_sums_backward(Tensor grad_dice, Tensor grad_ce, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor? class_weights, float boundary_weight, int boundary_radius, int? ignore_index, "
        "float label_smoothing, bool squared) -> Tensor");
  // The whole fused multi-class loss (lambda_ce * CE + lambda_dice * Dice; the math:
  // brnnseg_kernels/losses/ce_dice.py): the pixel pass of ce_dice_sums, then the loss from the sums and
  // the factors of its derivative in them (factors: 2*N*C + N + 1, what the backward reads). average
  // "present" or "all"; reduction "mean", "sum" or "none" (loss (N,)). On CUDA: two launches forward,
  // one backward, no host synchronisation (a label outside [0, C) makes the loss NaN there; the CPU raises).
  m.def("ce_dice_loss(Tensor logits, Tensor target, Tensor? weight, Tensor? class_weights, float boundary_weight, "
        "int boundary_radius, int? ignore_index, float label_smoothing, bool squared, float lambda_ce, "
        "float lambda_dice, float smooth_nr, float smooth_dr, bool batch, bool log_dice, bool include_background, "
        "str average, str reduction) -> (Tensor loss, Tensor factors)");
  // Gradient of sum(grad * loss) with respect to the logits, from the forward's factors, in one pass.
  m.def("ce_dice_loss_backward(Tensor grad, Tensor factors, Tensor logits, Tensor target, Tensor? weight, "
        "Tensor? class_weights, float boundary_weight, int boundary_radius, int? ignore_index, "
        "float label_smoothing, bool squared, bool batch, str reduction) -> Tensor");
}
