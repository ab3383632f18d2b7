// Maps (line, time step) of a row or column sweep to a position index p (see conventions.h).
#pragma once
#include <cstdint>
#include "brnnseg/host_device.h"

namespace brnnseg {

struct SweepGeometry {
  int64_t N, H, W;
  int axis;  // 3 = rows (time runs along W), 2 = cols (time runs along H)

  BRNNSEG_HD int64_t positions() const { return N * H * W; }
  BRNNSEG_HD int64_t lines() const { return axis == 3 ? N * H : N * W; }
  BRNNSEG_HD int64_t steps() const { return axis == 3 ? W : H; }
  // Distance in positions between time t and t+1 of one line.
  BRNNSEG_HD int64_t time_stride() const { return axis == 3 ? 1 : W; }
  // Position of time 0 of a line.
  BRNNSEG_HD int64_t line_start(int64_t line) const {
    if (axis == 3) return line * W;
    const int64_t n = line / W, w = line - n * W;
    return n * H * W + w;
  }
  BRNNSEG_HD int64_t pos(int64_t line, int64_t t) const { return line_start(line) + t * time_stride(); }
  // Lines of one image, and the distance in positions between neighbouring lines of an image.
  // Line index = n * lines_per_image() + j.
  BRNNSEG_HD int64_t lines_per_image() const { return axis == 3 ? H : W; }
  BRNNSEG_HD int64_t line_stride() const { return axis == 3 ? W : 1; }
  // Element offset of (line, t), channel 0, in a strided (N, C, H, W) tensor.
  BRNNSEG_HD int64_t strided_offset(int64_t line, int64_t t, int64_t sN, int64_t sH, int64_t sW) const {
    if (axis == 3) {
      const int64_t n = line / H, h = line - n * H;
      return n * sN + h * sH + t * sW;
    }
    const int64_t n = line / W, w = line - n * W;
    return n * sN + t * sH + w * sW;
  }
};

// Time index of the s-th step a direction takes (direction 1 walks backwards).
BRNNSEG_HD int64_t step_time(int direction, int64_t s, int64_t T) { return direction == 0 ? s : T - 1 - s; }

}  // namespace brnnseg
