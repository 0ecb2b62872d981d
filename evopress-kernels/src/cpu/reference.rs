//! Plain reference versions of every [`Device`](crate::Device) op: single-threaded, no
//! tricks, the math written out. They are the oracle the fast versions are tested against.

use crate::{AttnShape, RopeTable, Weight};

pub fn matmul_wt(x: &[f32], w: &Weight, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "matmul_wt: x is not [m, {k}]");
    assert_eq!(out.len(), m * n, "matmul_wt: out is not [m, {n}]");
    let wf = w.to_f32_vec();
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wj = &wf[j * k..(j + 1) * k];
            out[i * n + j] = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
        }
    }
}

pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(gamma) {
            *o = v * inv * g;
        }
    }
}

pub fn rope(x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
    let hd = table.head_dim;
    let half = hd / 2;
    for (t, &p) in positions.iter().enumerate() {
        let cos = &table.cos[p * half..(p + 1) * half];
        let sin = &table.sin[p * half..(p + 1) * half];
        for h in 0..n_heads {
            let v = &mut x[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cos[i] - b * sin[i];
                v[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape) {
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let (qw, kw) = (s.n_heads * hd, s.n_kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let past = s.kv_len - s.q_len;
    let mut scores = vec![0f32; s.kv_len];
    for b in 0..s.batch {
        for i in 0..s.q_len {
            for h in 0..s.n_heads {
                let kvh = h / group;
                let qv = &q[(b * s.q_len + i) * qw + h * hd..][..hd];
                let last = past + i;
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate().take(last + 1) {
                    let kv = &k[(b * s.kv_len + j) * kw + kvh * hd..][..hd];
                    *sc = qv.iter().zip(kv).map(|(a, c)| a * c).sum::<f32>() * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0.0;
                for sc in scores.iter_mut().take(last + 1) {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let o = &mut out[(b * s.q_len + i) * qw + h * hd..][..hd];
                o.fill(0.0);
                for (j, sc) in scores.iter().enumerate().take(last + 1) {
                    let vv = &v[(b * s.kv_len + j) * kw + kvh * hd..][..hd];
                    for (oe, ve) in o.iter_mut().zip(vv) {
                        *oe += sc / sum * ve;
                    }
                }
            }
        }
    }
}

pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign(row, bias);
    }
}

/// `log Σ_j e^{row[j]}` in f64.
fn row_logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// `Σ_rows −log softmax(row)[target]` in f64.
pub fn log_softmax_nll(logits: &[f32], vocab: usize, targets: &[u32]) -> f64 {
    logits
        .chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &t)| row_logsumexp(row) - row[t as usize] as f64)
        .sum()
}

/// `log Σ_j e^{row[j]}` per row.
pub fn logsumexp_rows(logits: &[f32], vocab: usize) -> Vec<f32> {
    logits
        .chunks_exact(vocab)
        .map(|row| row_logsumexp(row) as f32)
        .collect()
}

/// `Σ_rows Σ_j p_j (log p_j − log q_j)` with `p = softmax(p_row)`, `q = softmax(q_row)`, in f64.
pub fn kl_rows(p_logits: &[f32], q_logits: &[f32], vocab: usize) -> f64 {
    p_logits
        .chunks_exact(vocab)
        .zip(q_logits.chunks_exact(vocab))
        .map(|(x, y)| {
            let (lx, ly) = (row_logsumexp(x), row_logsumexp(y));
            x.iter()
                .zip(y)
                .map(|(&a, &b)| {
                    let (lp, lq) = (a as f64 - lx, b as f64 - ly);
                    lp.exp() * (lp - lq)
                })
                .sum::<f64>()
        })
        .sum()
}

/// `out[c, c] = xᵀ·x` for `x[n, c]`, summed in f64 then rounded.
pub fn gram(x: &[f32], cols: usize, out: &mut [f32]) {
    let n = x.len().checked_div(cols).unwrap_or(0);
    for i in 0..cols {
        for j in 0..cols {
            out[i * cols + j] = (0..n)
                .map(|l| x[l * cols + i] as f64 * x[l * cols + j] as f64)
                .sum::<f64>() as f32;
        }
    }
}
