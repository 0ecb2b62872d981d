//! Wanda end to end on the real demo model, through the same library calls as the binary: a
//! database built by `run_build`, searched by the sparse backend with `run_search`, the budget
//! exact in the assembled model.

use evopress_core::Method;
use evopress_kernels::cpu::Cpu;
use evopress_pipeline::{run_build, run_search, SearchOptions};
use std::path::PathBuf;

static METHODS: &[&dyn Method] = &[&evopress_sparse::SPARSE, &evopress_wanda::WANDA];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_wanda_database_is_built_and_searched() {
    let root = root();
    let model = root.join("assets/smollm2-135m-instruct.gguf");
    assert!(model.exists(), "run scripts/fetch-assets first");
    let sotu = root.join("assets/sotu");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let db_cfg = dir.path().join("db.toml");
    std::fs::write(
        &db_cfg,
        format!(
            r#"
[model]
path = "{model}"
[calibration]
files = ["{sotu}/1790_*.txt"]
seq_len = 128
windows = 4
sampling = "sequential"
[database]
kind = "wanda"
dir = "{d}/db"
sparsity = 0.5
num_levels = 2
"#,
            model = model.display(),
            sotu = sotu.display()
        ),
    )
    .unwrap();
    let built = run_build(METHODS, &db_cfg, &Cpu, None, true).unwrap();
    assert!(built.complete);
    assert_eq!(built.summary["backend"], "wanda");

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
kind = "wanda"
database = "{d}/db"
[search]
generations = 2
offspring = 4
stages = [{{ survivors = 1, tokens = 128 }}]
seed = 1
[baselines]
tokens = 128
[output]
dir = "{d}/out"
"#,
            model = model.display(),
            sotu = sotu.display()
        ),
    )
    .unwrap();
    let outcome = run_search(
        METHODS,
        &run_cfg,
        &Cpu,
        &SearchOptions {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = outcome.result.expect("a finished run");
    assert!(r.budget.holds, "{}", r.budget);
    let zeros = r.report["counted_zeros"].as_integer().unwrap();
    let weights = r.report["weights"].as_integer().unwrap();
    // Exactly half, up to kept weights that round to zero in f16.
    assert!(
        (0..=16).contains(&(zeros - weights / 2)),
        "{zeros} of {weights}"
    );
    let names: Vec<&str> = r.baselines.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["uniform", "dp"]);
    assert!(r.held_out.compressed_perplexity.is_finite());
    assert!(r.held_out.compressed_perplexity > r.held_out.dense_perplexity);
}
