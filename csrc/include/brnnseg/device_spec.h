// The limits of a GPU that decide whether a launch is accepted, and the figures the launch planner
// and the per-step latency model use. On a GPU they are read from cudaDeviceProp; the SIMT
// simulator and `python -m brnnseg_kernels plan` play a named GPU from the table below. Host-only,
// no CUDA or torch types, so the planner, the simulator and the C++ tests share it.
#pragma once
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

namespace brnnseg {

struct DeviceSpec {
  const char* name;
  int sm_count;
  size_t smem_per_block_default;  // dynamic + static shared memory a CTA gets without opting in
  size_t smem_per_block_optin;    // the most a CTA may use after cudaFuncSetAttribute
  size_t smem_per_sm;
  int regs_per_sm;
  int max_threads_per_block;
  int max_threads_per_sm;
  unsigned max_grid_x;
  unsigned max_grid_yz;
  double clock_ghz;               // boost clock, for the latency model only
};

// Datasheet figures (CUDA programming guide, compute capabilities 8.0 and 9.0). The H200 has the
// H100's SM and limits.
inline constexpr DeviceSpec kA100{"a100", 108, 48 * 1024, 163 * 1024, 164 * 1024, 65536, 1024, 2048, 0x7fffffffu, 65535u,
                           1.41};
inline constexpr DeviceSpec kH100{"h100", 132, 48 * 1024, 227 * 1024, 228 * 1024, 65536, 1024, 2048, 0x7fffffffu, 65535u,
                           1.755};

inline const DeviceSpec& device_spec(const std::string& name) {
  if (name == "a100") return kA100;
  if (name == "h100" || name == "h200") return kH100;
  throw std::invalid_argument("unknown GPU '" + name + "': expected one of a100, h100, h200");
}

}  // namespace brnnseg
