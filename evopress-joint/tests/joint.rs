//! The joint search on the real demo model (docs/joint-search.md): a small `sparse_gptq`
//! database (4 windows x 128 tokens, sparsities 0 and 50 %, 2 and 4 bits) is built once and
//! shared by the tests.

use evopress_core::build::{build_database, swap_unit, BuildRequest};
use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::{load_model, BlockPlan, Candidate, CompressionBackend, LoadedModel, Method};
use evopress_joint::backend::counted_bytes;
use evopress_joint::{Combo, JointBackend, JointBuilder, JointParams, JointSearchParams, JOINT};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::{Weight, WeightKind};
use evopress_pipeline::{run_search, Configs, SearchOptions};
use evopress_search::space::ON;
use evopress_search::{init, mutation, Genome};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo_model() -> PathBuf {
    let p = root().join("assets/smollm2-135m-instruct.gguf");
    assert!(p.exists(), "run scripts/fetch-assets first");
    p
}

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&demo_model()).unwrap())
}

fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let m = model();
    let path = root().join("assets/sotu/1790_george_washington_n.txt");
    let file = TokenizedFile::read(&path, m.tokenizer().unwrap()).unwrap();
    calibration_windows(&[file], len, n, Sampling::Sequential, 0).unwrap()
}

fn database() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let builder = JointBuilder::new(JointParams {
            sparsities: vec![0.0, 0.5],
            bits: vec![2, 4],
            group_size: 64,
            mse: false,
            rel_damp: 0.01,
            propagation: None,
        })
        .unwrap();
        let req = BuildRequest {
            model: &model().model,
            model_path: &demo_model(),
            windows: windows(4, 128),
            calibration: serde_json::json!({"test": "4 x 128 sequential, washington 1790"}),
            dir: &path,
            stop_after: None,
        };
        assert!(
            build_database(req, &Cpu, &builder, |_| {})
                .unwrap()
                .complete
        );
        (dir, path)
    })
    .1
}

fn backend(fraction: f64, drops: bool) -> JointBackend {
    let params = JointSearchParams {
        database: database().into(),
        target_bytes: None,
        target_fraction: Some(fraction),
        drops,
        pareto: false,
        sparsities: None,
        bits: None,
    };
    JointBackend::open(&model().model, params).unwrap()
}

fn logits(c: &Candidate, tokens: &[u32]) -> Vec<f32> {
    let h = c.model.hidden_states(&Cpu, tokens, 1, &c.plan).unwrap();
    c.model.lm_head(&Cpu, &h)
}

/// A random genome of the space with sub-blocks 3 (attention) and 20 (MLP) dropped, the
/// layers mixed over every stored combination.
fn mixed_genome(b: &JointBackend, seed: u64) -> Genome {
    let space = b.space();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut g = init::random_start(space, &mut rng).unwrap();
    for (u, unit) in space.units().iter().enumerate() {
        if unit.name == "model.layers.3.self_attn" || unit.name == "model.layers.20.mlp" {
            g.0[u] = 1;
        } else if !space.is_switch(u) {
            g.0[u] = ((u * 7 + seed as usize) % unit.levels.len()) as u16;
        }
    }
    g
}

#[test]
fn variants_are_packed_or_masked_packed_and_count_their_stored_bytes() {
    let b = backend(0.25, true);
    let table = b.table();
    for u in [0, 3, 6, 100] {
        let entry = table.entry(u);
        let unit = &table.units()[u];
        for level in &entry.levels {
            let c = Combo::from_id(level.id).unwrap();
            let w = evopress_joint::format::load_variant(table.store(), entry, level.id).unwrap();
            assert_eq!(w.bytes() as u64, level.bytes, "{} {c}", unit.name);
            let want_kind = if c.per_mille == 0 {
                WeightKind::Packed {
                    bits: c.bits,
                    group_size: 64,
                }
            } else {
                WeightKind::MaskedPacked {
                    bits: c.bits,
                    group_size: 128,
                }
            };
            assert_eq!(w.kind(), want_kind);
            let zeros = w.to_f32_vec().iter().filter(|&&x| x == 0.0).count();
            let pruned = (c.sparsity() * unit.numel() as f64).round() as usize;
            // Kept weights may also decode to 0 (a code equal to its zero point).
            assert!(zeros >= pruned, "{c}: {zeros} zeros, {pruned} pruned");
        }
    }
}

#[test]
fn packed_joint_candidates_give_the_logits_of_their_dense_equivalents() {
    let b = backend(0.25, true);
    let genome = mixed_genome(&b, 1);
    let packed = b.candidate(&model().model, &genome).unwrap();
    assert!(!packed.plan[3].attn && packed.plan[3].mlp && !packed.plan[20].mlp);
    let mut dense = packed.clone();
    let mut kinds = std::collections::HashSet::new();
    for unit in b.table().units() {
        let w = &packed.model.linear(unit.block, unit.parts[0].kind).weight;
        kinds.insert(format!("{:?}", w.kind()));
        let rows: Vec<f32> = (unit.parts.iter())
            .flat_map(|p| packed.model.linear(unit.block, p.kind).weight.to_f32_vec())
            .collect();
        let w = Weight::from_f32(unit.rows, unit.cols, rows);
        swap_unit(&mut dense.model.layers[unit.block], unit, &w);
    }
    assert_eq!(
        kinds.len(),
        4,
        "all four combinations are in the candidate: {kinds:?}"
    );
    let tokens = &windows(1, 96)[0];
    let (a, d) = (logits(&packed, tokens), logits(&dense, tokens));
    // Decoding a tile and multiplying it is the dense path's arithmetic: bit for bit.
    assert_eq!(
        a, d,
        "masked-packed and packed layers vs their dense decoding"
    );
    let original = logits(&Candidate::dense(&model().model), tokens);
    let moved = (original.iter().zip(&a))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-2,
        "the compressed model is another model ({moved})"
    );
}

#[test]
fn the_byte_budget_holds_exactly_in_the_assembled_model() {
    let b = backend(0.2, true);
    let space = b.space();
    let target = b.target_bytes();
    let bf16: u64 = b.table().units().iter().map(|u| 2 * u.numel() as u64).sum();
    assert_eq!(target, (0.2 * bf16 as f64) as u64);
    // The largest single step of any layer: a random start lowers until it fits, so it lands
    // within one step of the target.
    let max_step = (space.units().iter())
        .flat_map(|u| u.levels.windows(2).map(|w| w[1].cost.abs_diff(w[0].cost)))
        .max()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut drops_seen = 0;
    for seed in 0..4 {
        let mut g = init::random_start(space, &mut rng).unwrap();
        let start = space.total_cost(&g);
        assert!(
            start <= target && start + max_step > target,
            "start {start} of {target}"
        );
        for _ in 0..40 {
            if let Some(child) = mutation::mutate(space, &g, 3, &Default::default(), &mut rng) {
                g = child;
            }
            let c = b.candidate(&model().model, &g).unwrap();
            let counted = counted_bytes(b.table(), &c);
            assert_eq!(counted, space.total_cost(&g), "seed {seed}");
            assert!(counted <= target);
            drops_seen += (c.plan.iter()).filter(|p| !p.attn || !p.mlp).count();
        }
    }
    assert!(drops_seen > 0, "mutations drop sub-blocks");
}

#[test]
fn dp_is_no_worse_than_uniform_or_one_kind_on_its_proxy_and_baselines_fit() {
    let b = backend(0.2, true);
    let names: Vec<String> = b.baselines().into_iter().map(|x| x.name).collect();
    // 50 % sparse at 4 bits does not fit in 20 % of the bf16 bytes: no `dp_sparsity`.
    assert_eq!(names, ["uniform", "uniform_drop", "dp", "dp_bits"]);
    let m = &model().model;
    let samples = windows(2, 64);
    let cal = evopress_core::evaluate::Calibration::new(
        m,
        &Cpu,
        samples,
        evopress_core::fitness::FitnessKind::Kl,
        |_| {},
    )
    .unwrap();
    let lens = cal.sample_lens();
    let batch = evopress_search::batch::all_tokens(&lens, 128);
    let ctx = evopress_core::BaselineContext {
        model: m,
        dev: &Cpu,
        cal: &cal,
        batch: &batch,
        progress: &|_, _| {},
    };
    let err_sum = |g: &Genome| -> f64 {
        let (_, combos) = b.decode(g);
        (combos.iter().enumerate())
            .map(|(u, c)| b.table().entry(u).level(c.id()).unwrap().rel_error)
            .sum()
    };
    let mut sums = Vec::new();
    for name in &names {
        let base = b.baseline(name, &ctx).unwrap();
        let g = base.genome.unwrap();
        b.space().check_genome(&g).unwrap();
        assert!(b.space().total_cost(&g) <= b.target_bytes());
        let (drops, _) = b.decode(&g);
        let dropped = drops.attn.iter().chain(&drops.mlp).filter(|&&d| d).count();
        assert_eq!(dropped > 0, name == "uniform_drop", "{name}");
        if name == "dp_bits" {
            let (_, combos) = b.decode(&g);
            assert!(
                combos.iter().all(|c| c.per_mille == 0),
                "dp_bits: {combos:?}"
            );
        }
        sums.push(err_sum(&g));
    }
    assert!(sums[2] <= sums[0], "dp {} vs uniform {}", sums[2], sums[0]);
    // The all-kinds knapsack chooses among a superset of the bits-only one's options.
    assert!(sums[2] <= sums[3], "dp {} vs dp_bits {}", sums[2], sums[3]);
}

static METHODS: &[&dyn Method] = &[&JOINT];

#[test]
fn search_writes_a_config_that_eval_applies_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let sotu = root().join("assets/sotu");
    let run_cfg = dir.path().join("run.toml");
    std::fs::write(
        &run_cfg,
        format!(
            r#"
[model]
path = "{model}"
[calibration]
files = ["{sotu}/17*.txt"]
seq_len = 64
windows = 4
[eval]
files = ["{sotu}/2021_*.txt"]
seq_len = 128
windows = 1
[backend]
kind = "joint"
database = "{db}"
target_fraction = 0.2
[search]
generations = 2
offspring = 4
stages = [{{ survivors = 1, tokens = 128 }}]
initially_generated = 2
initial_tokens = 128
seed = 1
[baselines]
tokens = 128
[output]
dir = "{d}/out"
"#,
            model = demo_model().display(),
            sotu = sotu.display(),
            db = database().display(),
        ),
    )
    .unwrap();
    let opts = SearchOptions {
        quiet: true,
        ..Default::default()
    };
    let outcome = run_search(METHODS, &run_cfg, &Cpu, &opts).unwrap();
    let r = outcome.result.expect("a finished run");
    assert!(r.budget.holds, "{}", r.budget);
    let stored = r.report["stored_bytes"].as_integer().unwrap() as u64;
    assert_eq!(stored, r.budget.total_cost);
    assert!(r.held_out.compressed_perplexity.is_finite());
    assert!(r.held_out.compressed_perplexity > r.held_out.dense_perplexity);

    // `eval --joint-config F --database DIR`: the same model as the search's candidate.
    let b = backend(0.2, true);
    let genome = b.read_config(&outcome.out).unwrap();
    let from_search = b.candidate(&model().model, &genome).unwrap();
    let configs = Configs {
        files: vec![(&JOINT, outcome.out.join("joint_config.toml"))],
        database: Some(database().into()),
    };
    let (applied, report) = configs.apply(&model().model).unwrap();
    assert_eq!(
        report.fields["stored_bytes"].as_integer().unwrap() as u64,
        stored
    );
    let tokens = &windows(1, 64)[0];
    assert_eq!(logits(&applied, tokens), logits(&from_search, tokens));
    let dropped = (0..genome.0.len())
        .filter(|&u| b.space().is_switch(u) && b.space().level(&genome, u).id == ON)
        .count();
    let plan_drops: usize = (applied.plan.iter())
        .map(|p: &BlockPlan| usize::from(!p.attn) + usize::from(!p.mlp))
        .sum();
    assert_eq!(dropped, plan_drops);
    // A file naming a layer of a dropped sub-block, or missing a kept one, is refused.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dropped]\nmlp = [0]\n[linears]\n").unwrap();
    let configs = Configs {
        files: vec![(&JOINT, bad)],
        database: Some(database().into()),
    };
    let e = configs.apply(&model().model).unwrap_err().to_string();
    assert!(e.contains("has no combination"), "{e}");
}
