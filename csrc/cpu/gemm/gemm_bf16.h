// bfloat16 products with float32 accumulation for the per-step GEMMs of bfloat16 sweeps and sequences
// (the CPU tile engine's Products, recurrence/tile_engine.h). On AVX512-BF16 one vdpbf16ps does 32
// multiply-adds into 16 float32 lanes, twice the float32 FMA's; products of bfloat16 values are exact in
// float32, so the only rounding is that of the operands to bfloat16 (round to nearest even) and of the
// float32 sums.
//
// Operands are packed as "pairs": one uint32 holds two bfloat16 values adjacent in K (the low half the
// even k), the layout vdpbf16ps reads. B is packed as [K2][N] (K2 = ceil(K/2), odd K padded with a zero);
// A is read as A[m*sam + k2*sak] in pairs, so either [M][K2] (sam = K2, sak = 1) or [K2][M] (sam = 1,
// sak = M) for a transposed A.
#pragma once
#include <cstdint>
#include <vector>

namespace brnnseg::cpu {

// The CPU has AVX512-BF16 and BRNNSEG_CPU_ISA allows it (runtime/isa.h).
bool bf16_gemm_supported();

// Float32 (M x K, row stride ld) -> pairs [M][K2]: each row's values two by two.
void pack_pairs_along_rows(const float* src, int64_t ld, int64_t M, int64_t K, uint32_t* dst);
// Float32 (K x N, row stride ld) -> pairs [K2][N]: rows 2j and 2j+1 interleaved.
void pack_pairs_across_rows(const float* src, int64_t ld, int64_t K, int64_t N, uint32_t* dst);

// Float32 (K x N, row stride ld) -> pairs [N][K2], transposed: dst[n*K2 + j] = rows 2j and 2j+1 of column
// n. The A of a weight gradient (A^T . B over K buffered rows) as rows of pairs, the layout AMX tiles
// read without a transpose.
void pack_pairs_transposed(const float* src, int64_t ld, int64_t K, int64_t N, uint32_t* dst);

// C (M x N, row stride ldc) = A . B [+ C], A and B in pairs (above), K2 pairs deep.
void gemm_bf16_pairs(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t sam, int64_t sak,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// C = A1 . B1 + A2 . B2, both A rows of pairs (A[m*sa + k2]), both B [K2][ldb] pairs (N columns used):
// the input and recurrent products of gates that take their sum, in one pass (on AMX the tiles
// accumulate both and C is stored once).
void gemm_bf16_pairs_sum(int64_t M, int64_t N, int64_t K2a, const uint32_t* A1, int64_t sa1, const uint32_t* B1,
                         int64_t K2b, const uint32_t* A2, int64_t sa2, const uint32_t* B2, int64_t ldb, float* C,
                         int64_t ldc);

// C = op(A) . B [+ C] with float32 operands rounded to bfloat16: op(A) = A (M x K, stride lda) or A^T
// (A stored K x M). B is float32 (K x N, row stride ldb), or already packed (B_pairs, [K2][N]).
// Scratch for the packed operands is per thread.
void gemm_bf16(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
               float* C, int64_t ldc, bool accumulate);
void gemm_bf16_packed_b(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const uint32_t* B_pairs, float* C, int64_t ldc, bool accumulate);

// C = A . B [+ C] with A already in pairs (A[m*sam + k2*sak]) and B float32 (K x N, row stride ldb):
// the weight gradients, whose A (the gate gradients, transposed) serves two products.
void gemm_bf16_packed_a(int64_t M, int64_t N, int64_t K, const uint32_t* A, int64_t sam, int64_t sak, const float* B,
                        int64_t ldb, float* C, int64_t ldc, bool accumulate);

// bfloat16 rows (M x K bit patterns, row stride lda) as rows of pairs: with K and lda even (and A 4-byte
// aligned) the rows as they lie, else copied into `buf` with a zero pad. Returns them, their stride in
// pairs in `stride`.
const uint32_t* bf16_rows_as_pairs(const uint16_t* A, int64_t M, int64_t K, int64_t lda,
                                   std::vector<uint32_t>& buf, int64_t& stride);

// C = A . B_pairs [+ C] with A already bfloat16 (M x K bit patterns, row stride lda): with K and lda even
// its rows are pairs as they lie (no packing); else they are copied into pairs with a zero pad.
void gemm_bf16_rows_packed_b(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                             const uint32_t* B_pairs, float* C, int64_t ldc, bool accumulate);

// Conversions for the bfloat16 ops' loads and stores: n values, round to nearest even (vcvtneps2bf16
// on AVX512-BF16); dst = or += the widened values.
void bf16_from_float(const float* src, uint16_t* dst, int64_t n);
void float_from_bf16(const uint16_t* src, float* dst, int64_t n, bool accumulate);
// The same over `rows` rows of n values, lds / ldd apart (a tile's rows of a channels_last map): one call
// for a tile's step, where a call and a memcpy per row of 32-64 values spent more than the conversion.
void bf16_from_float_rows(const float* src, int64_t lds, uint16_t* dst, int64_t ldd, int64_t rows, int64_t n);
void float_from_bf16_rows(const uint16_t* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t n,
                          bool accumulate);

// dst[n*ld + m] = src[m*ls + n] for an M x N float32 block: 16 x 16 blocks transposed in registers on
// AVX-512. The sweeps' NCHW loads and stores of a tile's rows (sweep_cpu.cpp), which were scalar.
void transpose_f32(const float* src, int64_t ls, int64_t M, int64_t N, float* dst, int64_t ld);

}  // namespace brnnseg::cpu
