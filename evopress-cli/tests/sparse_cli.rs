//! The sparsity commands end to end on the real demo model, at test scale: `build-db` killed
//! (`--stop-after-blocks`) and resumed, `search` with `[backend] kind = "sparse"`, `baseline
//! sparse`, and `eval --sparse-config` with the original-format file, the zero count exact.

mod common;

use common::{model, ok, root};
use std::process::Output;

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn build_resume_search_baselines_and_eval() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let db = dir.join("db");
    let m = model().display().to_string();
    let db_cfg = dir.join("db.toml");
    std::fs::write(
        &db_cfg,
        format!(
            r#"
[model]
path = "{m}"
[calibration]
files = ["assets/sotu/1790_*.txt"]
seq_len = 64
windows = 2
sampling = "sequential"
generated = 1
[database]
kind = "sparsegpt"
dir = "{db}"
sparsity = 0.5
num_levels = 1
"#,
            db = db.display()
        ),
    )
    .unwrap();
    let cfg = db_cfg.display().to_string();
    ok(&[
        "build-db",
        "--config",
        &cfg,
        "--stop-after-blocks",
        "2",
        "--quiet",
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(db.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["blocks_done"], serde_json::json!([0, 1]));
    // The window the model wrote is kept in the store and recorded in its header, so the
    // resumed build below sees the same calibration.
    assert!(db.join("generated-calibration.json").exists());
    assert_eq!(manifest["calibration"]["generated"], 1);
    let out = ok(&["build-db", "--config", &cfg, "--quiet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("28 blocks built this run"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(db.join("build.json")).unwrap()).unwrap();
    assert_eq!(summary["complete"], true);
    assert!(summary["ratio_stored_to_original"].as_f64().unwrap() < 0.6);

    // A sparse search at test scale.
    let run_cfg = dir.join("run.toml");
    std::fs::write(
        &run_cfg,
        format!(
            r#"
[model]
path = "{m}"
[calibration]
files = ["assets/sotu/17*.txt"]
seq_len = 64
windows = 4
[eval]
files = ["assets/sotu/2021_*.txt"]
seq_len = 128
windows = 1
[backend]
kind = "sparse"
database = "{db}"
[search]
generations = 2
offspring = 3
stages = [{{ survivors = 1, tokens = 64 }}]
seed = 0
[output]
dir = "{out}"
"#,
            db = db.display(),
            out = dir.join("out").display()
        ),
    )
    .unwrap();
    let rc = run_cfg.display().to_string();
    ok(&["search", "--config", &rc, "--quiet"]);
    let result: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("out/result.toml")).unwrap()).unwrap();
    let counted = result["report"].as_table().unwrap();
    let (zeros, weights) = (
        counted["counted_zeros"].as_integer().unwrap(),
        counted["weights"].as_integer().unwrap(),
    );
    assert_eq!(
        2 * zeros,
        weights,
        "search result: {zeros} zeros of {weights}"
    );
    assert_eq!(result["budget"]["holds"].as_bool(), Some(true));
    let original = dir.join("out/sparse_config.txt");
    let text = std::fs::read_to_string(&original).unwrap();
    assert!(!text.ends_with('\n') && text.lines().count() == 210);

    // Baselines on the same config.
    ok(&["baseline", "--config", &rc, "--method", "all", "--quiet"]);
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/baselines.json")).unwrap())
            .unwrap();
    for row in rows.as_array().unwrap() {
        // Exactly the budget, up to kept weights that are zero anyway (f16 underflow of an
        // OBS-updated weight): a handful in 53M.
        let zeros = row["report"]["counted_zeros"].as_i64().unwrap();
        let weights = row["report"]["weights"].as_i64().unwrap();
        assert!((0..=16).contains(&(zeros - weights / 2)), "{row}");
        assert_eq!(row["report"]["level_sum"], 0);
        assert_eq!(row["budget"]["holds"], true);
    }

    // eval with the original-format file the search wrote.
    let biden = root().join("assets/sotu/2021_joseph_r_biden_d.txt");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            "--model",
            &m,
            "--data",
            &biden.display().to_string(),
            "--seq-len",
            "128",
            "--windows",
            "1",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let dense = json(&ok(&refs(&args(&[]))));
    let sparse = json(&ok(&refs(&args(&[
        "--sparse-config",
        &original.display().to_string(),
        "--database",
        &db.display().to_string(),
    ]))));
    let extra = sparse["counted_zeros"].as_i64().unwrap() - sparse["weights"].as_i64().unwrap() / 2;
    assert!((0..=16).contains(&extra), "{sparse}");
    let (d, s) = (
        dense["perplexity"].as_f64().unwrap(),
        sparse["perplexity"].as_f64().unwrap(),
    );
    assert!(s > d && s.is_finite(), "dense {d}, sparse {s}");
    let held_out = result["held_out"]["compressed_perplexity"]
        .as_float()
        .unwrap();
    assert!(held_out.is_finite());
}
