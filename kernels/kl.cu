/*
 * Row-wise reductions over the vocabulary, for the fitness functions: the negative
 * log-likelihood of a target token (perplexity) and KL(p || q) between two logit rows
 * (the dense model's p against a candidate's q). One scalar out per row.
 *
 * Decomposition (both kernels): one block of EVO_ROW_THREADS threads per row. Each pass has
 * every thread walk a strided slice of the row (consecutive threads read consecutive logits,
 * so loads are coalesced), then evo_block_reduce combines the per-thread partials. A row is
 * at most a few hundred KB, so the later passes mostly hit L2.
 *
 * Oracle: the f64 versions in evopress-kernels/tests/cuda_vs_cpu.rs.
 */
#include "evopress_kernels.h"

/* log(sum_v exp(row[v])), stably: max first, then the sum of exp(row - max). */
__device__ float evo_row_log_sum_exp(const float* row, int vocab)
{
    float max = EVO_NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        max = fmaxf(max, row[i]);
    max = evo_block_reduce<true>(max);

    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        sum += expf(row[i] - max);
    return max + logf(evo_block_reduce<false>(sum));
}

/* out[r] = -log softmax(logits[r, :])[targets[r]] = logsumexp(logits[r, :]) - logits[r, target]. */
extern "C" __global__ void nll_rows_f32(float* out, const float* logits, const int* targets, VocabParams p)
{
    const float* row = logits + (size_t)blockIdx.x * p.vocab;
    const float lse = evo_row_log_sum_exp(row, p.vocab);
    if (threadIdx.x == 0)
        out[blockIdx.x] = lse - row[targets[blockIdx.x]];
}

/*
 * out[r] = KL(p_r || q_r) = sum_v p_v (log p_v - log q_v), p = softmax(p_logits[r, :]),
 * q = softmax(q_logits[r, :]). With lp = a - lse(a) and lq = b - lse(b) this is
 * sum_v exp(lp_v) (lp_v - lq_v): two log-normalisers, then one weighted pass.
 */
extern "C" __global__ void kl_rows_f32(float* out, const float* p_logits, const float* q_logits, VocabParams p)
{
    const size_t at = (size_t)blockIdx.x * p.vocab;
    const float* a = p_logits + at;
    const float* b = q_logits + at;
    const float lse_p = evo_row_log_sum_exp(a, p.vocab);
    const float lse_q = evo_row_log_sum_exp(b, p.vocab);

    float kl = 0.0f;
    for (int i = threadIdx.x; i < p.vocab; i += blockDim.x) {
        const float lp = a[i] - lse_p, lq = b[i] - lse_q;
        kl += expf(lp) * (lp - lq);
    }
    kl = evo_block_reduce<false>(kl);
    if (threadIdx.x == 0)
        out[blockIdx.x] = kl;
}
