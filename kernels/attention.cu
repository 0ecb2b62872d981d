/*
 * Causal grouped-query softmax attention, f32, with an online (streaming) softmax so the
 * [q_len, kv_len] score matrix is never materialised.
 *
 * Oracle: evopress-kernels/src/cpu/reference.rs (attention).
 */
#include "evopress_kernels.h"

/*
 * q: [batch, q_len, n_heads * head_dim], k, v: [batch, kv_len, n_kv_heads * head_dim],
 * out like q. Query i sits at absolute position past + i (past = kv_len - q_len, the cache) and
 * sees keys 0..=past + i. Query head h reads key/value head h / (n_heads / n_kv_heads).
 *
 * Decomposition: grid = (query tiles, n_heads, batch); one block handles EVO_ATTN_Q_TILE
 * consecutive queries of one (batch, head), one warp per query. All queries of a block share
 * the same key/value head, so the block walks the keys once, in tiles of EVO_ATTN_KV_TILE (32)
 * keys staged through shared memory, and every warp reuses each staged tile.
 *
 * Per key tile, inside a warp:
 *   1. lane j computes the score of key k0 + j (a full dot product over head_dim against the
 *      staged keys; keys past the query's position score -inf);
 *   2. one warp max and one warp sum update the running max m and normaliser l
 *      (m' = max(m, tile max), rescale the old state by exp(m - m'));
 *   3. each lane owns head_dim / 32 output dimensions d = lane + 32 t and accumulates
 *      sum_j p_j v[j, d], taking p_j from lane j with a shuffle.
 * At the end out = acc / l. Key 0 is visible to every query, so after the first tile m is finite
 * and exp(-inf - m) = 0 masks cleanly.
 *
 * Shared memory (dynamic, sized by the launcher from head_dim):
 *   ks [KV_TILE][head_dim + 1]: the +1 pad makes lane j's row-j reads of column d hit distinct
 *                               banks (an odd row stride);
 *   vs [KV_TILE][head_dim]:     read along d by all lanes at the same j: conflict-free;
 *   qs [Q_TILE][head_dim]:      this block's queries, pre-multiplied by the softmax scale.
 */
extern "C" __global__ void attention_causal_gqa_f32(float* out, const float* q, const float* k, const float* v,
                                                    AttnParams p)
{
    extern __shared__ float smem[];
    const int hd = p.head_dim;
    float* ks = smem;
    float* vs = ks + EVO_ATTN_KV_TILE * (hd + 1);
    float* qs = vs + EVO_ATTN_KV_TILE * hd;

    const int b = blockIdx.z, h = blockIdx.y;
    const int kv_head = h / (p.n_heads / p.n_kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int first_query = blockIdx.x * EVO_ATTN_Q_TILE;
    const int query = first_query + warp;
    const int past = p.kv_len - p.q_len;
    const size_t q_row = (size_t)p.n_heads * hd, kv_row = (size_t)p.n_kv_heads * hd;

    for (int idx = threadIdx.x; idx < EVO_ATTN_Q_TILE * hd; idx += blockDim.x) {
        const int r = idx / hd, d = idx % hd, qi = first_query + r;
        qs[idx] = qi < p.q_len ? q[((size_t)b * p.q_len + qi) * q_row + (size_t)h * hd + d] * p.scale : 0.0f;
    }

    /* The last key this warp's query may see, and the last key any query of the block sees. */
    const int my_last = past + query;
    const int block_last = min(past + first_query + EVO_ATTN_Q_TILE - 1, p.kv_len - 1);

    const int per_lane = EVO_ATTN_MAX_HEAD_DIM / 32;
    float acc[per_lane];
    for (int t = 0; t < per_lane; ++t)
        acc[t] = 0.0f;
    float m = EVO_NEG_INF, l = 0.0f;

    for (int k0 = 0; k0 <= block_last; k0 += EVO_ATTN_KV_TILE) {
        __syncthreads(); /* the previous tile is consumed (and qs is written, on entry) */
        for (int idx = threadIdx.x; idx < EVO_ATTN_KV_TILE * hd; idx += blockDim.x) {
            const int j = idx / hd, d = idx % hd, key = k0 + j;
            const bool in_range = key < p.kv_len;
            const size_t at = ((size_t)b * p.kv_len + key) * kv_row + (size_t)kv_head * hd + d;
            ks[j * (hd + 1) + d] = in_range ? k[at] : 0.0f;
            vs[j * hd + d] = in_range ? v[at] : 0.0f;
        }
        __syncthreads();

        const int key = k0 + lane;
        float s = EVO_NEG_INF;
        if (key <= my_last && key < p.kv_len) {
            s = 0.0f;
            for (int d = 0; d < hd; ++d)
                s += qs[warp * hd + d] * ks[lane * (hd + 1) + d];
        }
        const float m_new = fmaxf(m, evo_warp_max(s));
        const float rescale = expf(m - m_new);
        const float p_j = expf(s - m_new);
        l = l * rescale + evo_warp_sum(p_j);

        const int n_keys = min(EVO_ATTN_KV_TILE, block_last - k0 + 1);
        for (int t = 0; t < per_lane; ++t)
            acc[t] *= rescale;
        for (int j = 0; j < n_keys; ++j) {
            const float pj = __shfl_sync(EVO_FULL_MASK, p_j, j);
            for (int t = 0; t < per_lane; ++t) {
                const int d = lane + 32 * t;
                if (d < hd)
                    acc[t] += pj * vs[j * hd + d];
            }
        }
        m = m_new;
    }

    if (query < p.q_len) {
        float* o = out + ((size_t)b * p.q_len + query) * q_row + (size_t)h * hd;
        for (int t = 0; t < per_lane; ++t) {
            const int d = lane + 32 * t;
            if (d < hd)
                o[d] = acc[t] / l;
        }
    }
}
