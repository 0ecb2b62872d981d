//! GPTQ vs round-to-nearest on synthetic layers shaped like SmolLM2-135M's linears.
//!
//! `cargo run --release -p evopress-quant --example gptq_report`
//!
//! Prints `rel_error = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)` for RTN and GPTQ (natural order, act-order)
//! at 2/3/4 bits, and the packed size against one fp16 tensor per bit width (the original
//! database layout). Weights are Gaussian and H comes from correlated, outlier-heavy synthetic
//! activations (`evopress_quant::synth`), so the numbers are deterministic but not a model's.

use std::time::Instant;

use evopress_quant::synth::{correlated_hessian, gaussian};
use evopress_quant::{gptq, rel_error, rtn, GptqConfig, QuantSpec};

fn main() {
    // (name, rows = out, cols = in): q_proj / o_proj and down_proj of SmolLM2-135M.
    let shapes = [
        ("576x576 (q/o_proj)", 576, 576),
        ("576x1536 (down_proj)", 576, 1536),
    ];
    println!(
        "layer                  group bits   rtn      gptq     gptq+act  ratio  bytes/fp16  time"
    );
    for (name, rows, cols) in shapes {
        let w = gaussian(rows * cols, 1);
        let h = correlated_hessian(cols, 2 * cols, 2);
        for group in [64, 128] {
            for bits in [2u8, 3, 4] {
                let spec = QuantSpec::new(bits, group);
                let e_rtn = rel_error(
                    &w,
                    &rtn(&w, rows, cols, &spec).unwrap().w_hat,
                    rows,
                    cols,
                    &h,
                );
                let t = Instant::now();
                let q = gptq(&w, rows, cols, &h, &spec, &GptqConfig::default()).unwrap();
                let secs = t.elapsed().as_secs_f64();
                let e = rel_error(&w, &q.w_hat, rows, cols, &h);
                let act = GptqConfig {
                    act_order: true,
                    ..GptqConfig::default()
                };
                let qa = gptq(&w, rows, cols, &h, &spec, &act).unwrap();
                let e_act = rel_error(&w, &qa.w_hat, rows, cols, &h);
                let ratio = q.packed.bytes() as f64 / q.packed.dense_f16_bytes() as f64;
                println!(
                    "{name:22} {group:5} {bits:4}   {e_rtn:.5}  {e:.5}  {e_act:.5}   {:.3}  {ratio:.3}       {:.0} ms",
                    e / e_rtn,
                    secs * 1e3
                );
            }
        }
    }
}
