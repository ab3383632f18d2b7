// The AMX tile configuration the bfloat16 kernels use (gemm_bf16.cpp, and the peak probe in
// fma_peak.cpp): palette 1, eight tiles of 16 rows x 64 bytes (tmm0-3 float32 accumulators, tmm4-7
// bfloat16 operands). Loaded with _tile_loadconfig by the code that uses the tiles, released after.
#pragma once
#include <cstdint>

namespace brnnseg::cpu {

struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  AmxConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

}  // namespace brnnseg::cpu
