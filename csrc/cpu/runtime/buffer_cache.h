// Large CPU buffers (outputs, saved gates, gradients) from a cache of freed blocks.
//
// Every call of a sweep allocates tens of MB and frees them again. From the OS, fresh memory costs
// a page fault and a page clear per 4 KiB: measured 10-16 % of a ReNet block's forward+backward
// (cpu-med, cpu-hires) and most of the gap between the sequence ops' training and inference
// forwards; for a small map (cpu-wide) the fresh copies of the transposed weights alone cost 8 % of
// the forward. Buffers of 256 KiB and more therefore come from an allocator that keeps freed blocks
// (rounded to 256 KiB under 2 MiB, to 2 MiB above) for reuse, up to BRNNSEG_CPU_CACHE_MB idle
// (default 1024; 0 turns the cache off). The tensors are ordinary CPU tensors (resizable, any memory format); release_cached_buffers()
// returns the idle blocks to the system.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace brnnseg::cpu {

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat fmt = at::MemoryFormat::Contiguous);

// Frees every idle cached block; returns the bytes released.
int64_t release_cached_buffers();

}  // namespace brnnseg::cpu
