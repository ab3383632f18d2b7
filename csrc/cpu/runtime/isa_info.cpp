// torch.ops.brnnseg.cpu_isa() -> "vector=avx512;bf16=amx_bf16;avx512_bf16_cpu=yes;amx_bf16=yes;cap=none":
// what the CPU
// kernels run on (runtime/isa.h), for brnnseg_kernels.cpu_isa(), `info`, the benchmarks and the tests.
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "cpu/runtime/isa.h"

namespace brnnseg::cpu {
namespace {

std::string cpu_isa_info() {
  static const char* kVector[] = {"baseline", "avx2", "avx512"};
  const char* cap = std::getenv("BRNNSEG_CPU_ISA");
  std::string s = "vector=";
  s += kVector[static_cast<int>(cpu_isa())];
  s += ";bf16=";
  const Bf16Isa b = cpu_bf16_isa();
  s += b == Bf16Isa::kAmxBf16 ? "amx_bf16" : b == Bf16Isa::kAvx512Bf16 ? "avx512_bf16" : "none";
  s += ";avx512_bf16_cpu=";
  s += detected_avx512_bf16() ? "yes" : "no";
  s += ";amx_bf16=";
  // yes: the CPU has the tiles and the OS granted them; refused: it has them, the OS said no.
  s += !detected_amx_bf16() ? "no" : amx_permitted() ? "yes" : "refused";
  s += ";cap=";
  s += cap != nullptr && *cap != '\0' ? cap : "none";
  return s;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(brnnseg, m) { m.def("cpu_isa() -> str", &cpu_isa_info); }

}  // namespace brnnseg::cpu
