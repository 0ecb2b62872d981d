/*
 * The small per-token ops of a decoder block: RMSNorm, rotate-half RoPE, SwiGLU's silu(gate) * up,
 * the residual add and the bias add. All f32, all memory-bound: each kernel reads its inputs once
 * and writes once, so the decomposition only has to keep accesses coalesced.
 *
 * Oracle: evopress-kernels/src/cpu/reference.rs (rms_norm, rope, silu_mul, add_assign, add_bias).
 */
#include "evopress_kernels.h"

/*
 * out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * gamma
 *
 * One block of EVO_ROW_THREADS threads per row. Pass 1: each thread sums the squares of a strided
 * slice of the row (consecutive threads read consecutive floats), the block reduces the partial
 * sums. Pass 2: each thread scales the same slice. The row (a few KB) is still in L1/L2 for pass 2.
 */
extern "C" __global__ void rms_norm_f32(float* out, const float* x, const float* gamma, RmsNormParams p)
{
    const size_t row = blockIdx.x;
    const float* xr = x + row * p.dim;
    float* outr = out + row * p.dim;

    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x)
        sum_sq += xr[i] * xr[i];
    sum_sq = evo_block_reduce<false>(sum_sq);

    const float inv_rms = 1.0f / sqrtf(sum_sq / (float)p.dim + p.eps);
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x)
        outr[i] = xr[i] * inv_rms * gamma[i];
}

/*
 * Rotate-half RoPE in place on x[n_tok, n_heads, 2 * half_dim], token t at positions[t]:
 *   (a, b) = (x[i], x[i + half]) -> (a cos - b sin, b cos + a sin),  cos/sin = table[pos, i].
 *
 * One thread per rotated pair (t, h, i): it owns x[i] and x[i + half] of its head, so no two
 * threads touch the same element and the op is safely in place. Consecutive threads take
 * consecutive i, so the loads of both halves and of the table rows are coalesced.
 */
extern "C" __global__ void rope_rotate_half_f32(float* x, const int* positions, const float* cos_table,
                                                const float* sin_table, RopeParams p)
{
    const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_pairs = (long long)p.n_tok * p.n_heads * p.half_dim;
    if (pair >= n_pairs)
        return;
    const int i = (int)(pair % p.half_dim);
    const long long token_head = pair / p.half_dim;
    const int t = (int)(token_head / p.n_heads);

    float* v = x + token_head * 2 * p.half_dim;
    const size_t table_at = (size_t)positions[t] * p.half_dim + i;
    const float c = cos_table[table_at], s = sin_table[table_at];
    const float a = v[i], b = v[i + p.half_dim];
    v[i] = a * c - b * s;
    v[i + p.half_dim] = b * c + a * s;
}

/*
 * The element-wise ops: one thread per element, in a grid-stride loop so any grid size covers
 * any n. Consecutive threads touch consecutive elements (coalesced).
 */

/* gate = silu(gate) * up = gate / (1 + exp(-gate)) * up (SwiGLU). */
extern "C" __global__ void silu_mul_f32(float* gate, const float* up, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* x += y (residual connections). */
extern "C" __global__ void add_assign_f32(float* x, const float* y, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

/* x[r, :] += bias for every row r of x[n / dim, dim]. */
extern "C" __global__ void add_bias_f32(float* x, const float* bias, long long n, int dim)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] += bias[i % dim];
}
