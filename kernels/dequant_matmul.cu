/*
 * A linear layer without bias: out[m, n] = x[m, k] . W[n, k]^T, with f32 activations and the
 * weight in its file dtype (f32, f16 or bf16), widened to f32 as it is loaded. Accumulation is
 * in f32. Two shapes:
 *   - matmul_wt_*: tiled, for prefill / calibration batches (m > 1);
 *   - gemv_wt_*:   one token (m = 1), where the op is a pure stream over W.
 * Simple and correct first: no tensor cores, no async copies, no double buffering.
 *
 * Oracle: evopress-kernels/src/cpu/reference.rs (matmul_wt).
 */
#include "evopress_kernels.h"

/*
 * Tiled matmul. Block (bx, by) computes the EVO_MM_TILE_M x EVO_MM_TILE_N (64 x 64) output tile
 * at rows m0 = by * 64, columns n0 = bx * 64 with 16 x 16 threads; thread (tx, ty) owns the
 * 4 x 4 outputs at rows m0 + ty + 16 i and columns n0 + tx + 16 j (interleaved rather than
 * contiguous, so that at each step a warp reads 16 consecutive weight columns from shared
 * memory without bank conflicts, and the x values it reads are broadcasts).
 *
 * The k axis is walked EVO_MM_TILE_K (16) at a time: all 256 threads cooperatively copy the
 * 64 x 16 slab of x and of W into shared memory (coalesced global reads along k, converting W
 * to f32), transposed to [k][row] so the inner loop indexes both by the output coordinate; the
 * +1 pad breaks the power-of-two stride of those transposing stores. Out-of-range rows and
 * k are loaded as 0, so edges need no special case in the inner loop.
 */
static_assert(EVO_MM_TILE_M == 64 && EVO_MM_TILE_N == 64 && EVO_MM_THREADS == 256,
              "the thread mapping below is 16 x 16 threads with 4 x 4 outputs each, one slab row per tile row");

template <typename W>
__device__ void matmul_wt_tiled(float* out, const float* x, const W* w, MatmulParams p)
{
    __shared__ float xs[EVO_MM_TILE_K][EVO_MM_TILE_M + 1];
    __shared__ float ws[EVO_MM_TILE_K][EVO_MM_TILE_N + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * EVO_MM_TILE_M, n0 = blockIdx.x * EVO_MM_TILE_N;

    float acc[4][4] = {};
    for (int k0 = 0; k0 < p.k; k0 += EVO_MM_TILE_K) {
        for (int idx = threadIdx.x; idx < EVO_MM_TILE_M * EVO_MM_TILE_K; idx += EVO_MM_THREADS) {
            const int r = idx / EVO_MM_TILE_K, kk = idx % EVO_MM_TILE_K;
            const int row = m0 + r, col = n0 + r, kg = k0 + kk;
            xs[kk][r] = row < p.m && kg < p.k ? x[(size_t)row * p.k + kg] : 0.0f;
            ws[kk][r] = col < p.n && kg < p.k ? evo_to_f32(w[(size_t)col * p.k + kg]) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < EVO_MM_TILE_K; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i)
                a[i] = xs[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j)
                b[j] = ws[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j)
                    acc[i][j] += a[i] * b[j];
        }
        __syncthreads(); /* the slab is consumed before the next one overwrites it */
    }

    for (int i = 0; i < 4; ++i) {
        const int row = m0 + ty + 16 * i;
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + tx + 16 * j;
            if (row < p.m && col < p.n)
                out[(size_t)row * p.n + col] = acc[i][j];
        }
    }
}

/*
 * GEMV for one token: out[j] = x . W[j, :]. One warp per output j (EVO_GEMV_WARPS per block):
 * its lanes stride along row j of W (coalesced), multiply by x (shared by every warp, so it is
 * served from L1/L2), and a warp sum finishes the dot product. The cost is reading W once.
 */
template <typename W>
__device__ void gemv_wt(float* out, const float* x, const W* w, MatmulParams p)
{
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * EVO_GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= p.n)
        return; /* a whole warp leaves together, so the warp sum below stays full */
    const W* wj = w + (size_t)j * p.k;
    float sum = 0.0f;
    for (int i = lane; i < p.k; i += 32)
        sum += x[i] * evo_to_f32(wj[i]);
    sum = evo_warp_sum(sum);
    if (lane == 0)
        out[j] = sum;
}

/* One entry point per weight dtype; the templates above hold the code. */
extern "C" __global__ void matmul_wt_f32(float* out, const float* x, const float* w, MatmulParams p)
{
    matmul_wt_tiled(out, x, w, p);
}
extern "C" __global__ void matmul_wt_f16(float* out, const float* x, const evo_f16* w, MatmulParams p)
{
    matmul_wt_tiled(out, x, w, p);
}
extern "C" __global__ void matmul_wt_bf16(float* out, const float* x, const evo_bf16* w, MatmulParams p)
{
    matmul_wt_tiled(out, x, w, p);
}
extern "C" __global__ void gemv_wt_f32(float* out, const float* x, const float* w, MatmulParams p)
{
    gemv_wt(out, x, w, p);
}
extern "C" __global__ void gemv_wt_f16(float* out, const float* x, const evo_f16* w, MatmulParams p)
{
    gemv_wt(out, x, w, p);
}
extern "C" __global__ void gemv_wt_bf16(float* out, const float* x, const evo_bf16* w, MatmulParams p)
{
    gemv_wt(out, x, w, p);
}
