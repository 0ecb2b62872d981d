//! GPTQ vs round-to-nearest on synthetic layers shaped like SmolLM2-135M's linears.
//!
//! `cargo run --release -p evopress-quant --example gptq_report`
//!
//! Prints `rel_error = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)` for RTN and GPTQ (natural order, act-order)
//! at 2/3/4 bits, and the packed size against one fp16 tensor per bit width (the original
//! database layout). Weights are Gaussian and H comes from correlated, outlier-heavy synthetic
//! activations (`evopress_quant::synth`), so the numbers are deterministic but not a model's.

use std::time::Instant;

use evopress_core::hessian::rel_error;
use evopress_quant::synth::{correlated_hessian, gaussian};
use evopress_quant::{rtn, GptqConfig, GptqHessian, QuantSpec};

fn main() {
    // (name, rows = out, cols = in): q_proj / o_proj and down_proj of SmolLM2-135M.
    let shapes = [
        ("576x576 (q/o_proj)", 576, 576),
        ("576x1536 (down_proj)", 576, 1536),
    ];
    for (name, rows, cols) in shapes {
        let w = gaussian(rows * cols, 1);
        let h = correlated_hessian(cols, 2 * cols, 2);
        // One factorisation per layer and order, reused for every bit width and group size.
        let t = Instant::now();
        let natural = GptqHessian::new(&h, cols, &GptqConfig::default()).unwrap();
        let prep = t.elapsed().as_secs_f64();
        let act_cfg = GptqConfig {
            act_order: true,
            ..GptqConfig::default()
        };
        let act = GptqHessian::new(&h, cols, &act_cfg).unwrap();
        println!("\n{name}: Hessian prepared in {:.0} ms", prep * 1e3);
        println!("group bits   rtn      gptq     gptq+act  gptq/rtn  bytes/fp16  gptq time");
        for group in [64, 128] {
            for bits in [2u8, 3, 4] {
                let spec = QuantSpec::new(bits, group);
                let e_rtn = rel_error(
                    &w,
                    &rtn(&w, rows, cols, &spec).unwrap().w_hat,
                    &h,
                    rows,
                    cols,
                )
                .unwrap();
                let t = Instant::now();
                let q = natural.quantize(&w, rows, &spec).unwrap();
                let secs = t.elapsed().as_secs_f64();
                let e = rel_error(&w, &q.w_hat, &h, rows, cols).unwrap();
                let qa = act.quantize(&w, rows, &spec).unwrap();
                let e_act = rel_error(&w, &qa.w_hat, &h, rows, cols).unwrap();
                let ratio = q.packed.bytes() as f64 / q.packed.dense_f16_bytes() as f64;
                println!(
                    "{group:5} {bits:4}   {e_rtn:.5}  {e:.5}  {e_act:.5}   {:.3}     {ratio:.3}       {:.0} ms",
                    e / e_rtn,
                    secs * 1e3
                );
            }
        }
    }
}
