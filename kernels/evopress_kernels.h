/*
 * Launch parameters shared by the kernels in kernels/*.cu and the Rust side
 * (evopress-kernels/src/cuda), which gets a #[repr(C)] mirror of every struct and constant here
 * from bindgen. The first part is plain C so that bindgen (libclang in C mode) reads it; the
 * device helpers after `#ifdef __CUDACC__` are seen by nvcc and NVRTC only.
 *
 * Sizes are `int`: every tensor dimension of the models we run is far below 2^31. Products of
 * dimensions (element offsets) are computed in `size_t` / `long long` inside the kernels.
 *
 * No system or CUDA header is included, so NVRTC compiles the kernels without include paths.
 */
#ifndef EVOPRESS_KERNELS_H
#define EVOPRESS_KERNELS_H

/* Threads per block of the row-wise kernels (rms_norm, nll, kl): one block per row. */
#define EVO_ROW_THREADS 256
/* Threads per block of the element-wise kernels (one thread per element or rotated pair). */
#define EVO_ELEMENTWISE_THREADS 256

/* Attention: one warp per query, EVO_ATTN_Q_TILE queries per block, keys and values staged
 * through shared memory EVO_ATTN_KV_TILE (= warp size: lane j scores key j) at a time. */
#define EVO_ATTN_Q_TILE 8
#define EVO_ATTN_KV_TILE 32
#define EVO_ATTN_MAX_HEAD_DIM 256

/* Tiled matmul: a 64 x 64 block of outputs per 16 x 16 threads (4 x 4 outputs per thread),
 * walking k in steps of 16. */
#define EVO_MM_TILE_M 64
#define EVO_MM_TILE_N 64
#define EVO_MM_TILE_K 16
#define EVO_MM_THREADS 256
/* GEMV (one token): one warp per output, this many warps per block. */
#define EVO_GEMV_WARPS 8

/* out[m, n] = x[m, k] . W[n, k]^T: x is f32, W is f32, f16 or bf16 (the file's dtype). */
typedef struct MatmulParams {
    int m, n, k;
} MatmulParams;

/* Row-wise RMSNorm over `n_rows` rows of `dim` values. */
typedef struct RmsNormParams {
    int n_rows, dim;
    float eps;
} RmsNormParams;

/* Rotate-half RoPE on x[n_tok, n_heads, 2 * half_dim]; the cos/sin tables have `half_dim`
 * columns per position. */
typedef struct RopeParams {
    int n_tok, n_heads, half_dim;
} RopeParams;

/* Causal grouped-query attention; same meaning as the Rust `AttnShape`, plus the softmax scale.
 * Query i sits at absolute position kv_len - q_len + i and sees keys 0..= that position. */
typedef struct AttnParams {
    int batch, q_len, kv_len, n_heads, n_kv_heads, head_dim;
    float scale;
} AttnParams;

/* Row-wise reductions over the vocabulary: `n_rows` rows of `vocab` logits. */
typedef struct VocabParams {
    int n_rows, vocab;
} VocabParams;

#ifdef __CUDACC__

#define EVO_FULL_MASK 0xffffffffu
#define EVO_NEG_INF __int_as_float(0xff800000)

/* Half-precision weights are passed as raw 16-bit patterns wrapped in distinct types, so that
 * overloading picks the right conversion and no cuda_fp16.h / cuda_bf16.h is needed. */
struct evo_f16 {
    unsigned short bits;
};
struct evo_bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float evo_to_f32(float v) { return v; }
__device__ __forceinline__ float evo_to_f32(evo_f16 v)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}
/* bf16 is the top half of an f32: widening is a shift. */
__device__ __forceinline__ float evo_to_f32(evo_bf16 v)
{
    return __uint_as_float(((unsigned int)v.bits) << 16);
}

__device__ __forceinline__ float evo_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(EVO_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float evo_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(EVO_FULL_MASK, v, o));
    return v;
}

/* Sum (MAX = false) or max (MAX = true) of `v` over the whole block, returned to every thread.
 * blockDim.x must be a multiple of 32. Each warp reduces with shuffles, lane 0 parks the
 * warp's result in shared memory, then every warp reduces those partials itself (cheaper than
 * a broadcast round). The trailing barrier lets a kernel call this again straight away. */
template <bool MAX>
__device__ float evo_block_reduce(float v)
{
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = MAX ? evo_warp_max(v) : evo_warp_sum(v);
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    const float identity = MAX ? EVO_NEG_INF : 0.0f;
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : identity;
    v = MAX ? evo_warp_max(v) : evo_warp_sum(v);
    __syncthreads();
    return v;
}

#endif /* __CUDACC__ */
#endif /* EVOPRESS_KERNELS_H */
