// The sweep kernels' launchers, declared for every (cell, storage type): raw pointers in, no torch
// types. Defined in sweep_launch_impl.cuh and instantiated per dtype by sweep_{fwd,bwd}_{fp32,fp16,
// bf16}.cu (CUDA) or implicitly by the simulator build (csrc/sim/sweep_sim.cpp), so the host code that
// includes this header compiles without the kernels.
#pragma once
#include "brnnseg/params.h"
#include "cuda/sweep_plan.h"

namespace brnnseg {

// Grid (tiles, 2 directions, sweeps of the batch); the config is the same for every sweep of a batch.
template <typename Cell, typename T>
void sweep_fwd_launch(const SweepBatch<SweepFwdParams<T>>& batch, const LaunchConfig& config, void* stream);
template <typename Cell, typename T>
void sweep_bwd_launch(const SweepBatch<SweepBwdParams<T>>& batch, const LaunchConfig& config, void* stream);
// The tensor-core kernels (config.recurrence == Recurrence::kMma, from mma_launch_config): defined in
// sweep_mma_launch_impl.cuh, instantiated by sweep_{fwd,bwd}_mma_{fp32,fp16,bf16}.cu.
template <typename Cell, typename T>
void sweep_fwd_mma_launch(const SweepBatch<SweepFwdParams<T>>& batch, const LaunchConfig& config, void* stream);
template <typename Cell, typename T>
void sweep_bwd_mma_launch(const SweepBatch<SweepBwdParams<T>>& batch, const LaunchConfig& config, void* stream);

// Applies the config to every sweep of a batch: tile, shared-memory gates, blocks (tiles) per sweep.
// The forward tensor-core kernel's input-projection ring (the other parameter sets have none).
template <typename T>
void set_gx_stages(SweepFwdParams<T>& p, const LaunchConfig& c) {
  p.gx_stages = c.gx_stages;
}
template <typename Params>
void set_gx_stages(Params&, const LaunchConfig&) {}

template <typename Params>
void set_batch_blocks(SweepBatch<Params>& b, const LaunchConfig& c) {
  for (int i = 0; i < b.count; ++i) {
    b.sweep[i].tile = c.tile;
    b.sweep[i].smem_gates = c.smem_gates;
    set_gx_stages(b.sweep[i], c);
    b.blocks[i] = static_cast<int>((b.sweep[i].geo.lines() + c.tile - 1) / c.tile);
  }
}

}  // namespace brnnseg
