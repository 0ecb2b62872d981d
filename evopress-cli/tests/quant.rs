//! The quantization commands end to end on the real demo model: `build-db` (gptq), a tiny
//! `search` with `[backend] kind = "quant"`, `eval --quant-config` on the original-format file
//! the search wrote, and `baseline quant`.

mod common;

use common::{model, ok, root};
use std::path::Path;

fn write(p: &Path, text: &str) -> String {
    std::fs::write(p, text).unwrap();
    p.display().to_string()
}

#[test]
fn build_search_eval_and_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = (model().display().to_string(), dir.path().display());
    let db_cfg = write(
        &dir.path().join("db.toml"),
        &format!(
            r#"
[model]
path = "{m}"
[calibration]
files = ["assets/sotu/1790_*.txt"]
seq_len = 128
windows = 4
sampling = "sequential"
[database]
kind = "gptq"
dir = "{d}/db"
bits = [2, 4]
group_size = 64
propagation = "dense"
"#
        ),
    );
    // Interrupted after 2 blocks, then resumed to the end.
    let partial = ok(&[
        "build-db",
        "--quiet",
        "--config",
        &db_cfg,
        "--stop-after-blocks",
        "2",
    ]);
    assert!(
        partial.stderr.is_empty(),
        "--quiet printed: {}",
        String::from_utf8_lossy(&partial.stderr)
    );
    let out = ok(&["build-db", "--quiet", "--config", &db_cfg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("complete"), "{text}");

    let run_cfg = write(
        &dir.path().join("run.toml"),
        &format!(
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
kind = "quant"
database = "{d}/db"
target_bits = 3.0
step = 2
[search]
generations = 2
offspring = 4
stages = [{{ survivors = 1, tokens = 128 }}]
initially_generated = 4
initial_tokens = 64
seed = 3
[output]
dir = "{d}/out"
"#
        ),
    );
    ok(&["search", "--quiet", "--config", &run_cfg]);
    let out = dir.path().join("out");
    let original = std::fs::read_to_string(out.join("quant_config.txt")).unwrap();
    assert!(
        !original.ends_with('\n'),
        "the original format has no trailing newline"
    );
    assert_eq!(original.lines().count(), 30 * 7);
    let result: toml::Table = std::fs::read_to_string(out.join("result.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let stored = result["report"].as_table().unwrap();
    assert_eq!(stored["average_bits"].as_float(), Some(3.0));
    assert!(result["budget"]["holds"].as_bool().unwrap());
    let held_out = result["held_out"]["compressed_perplexity"]
        .as_float()
        .unwrap();

    // The original-format file evaluates to the search's own number and reports the bytes.
    let config = out.join("quant_config.txt").display().to_string();
    let data = root().join("assets/sotu/2021_joseph_r_biden_d.txt");
    let eval = ok(&[
        "eval",
        "--model",
        &m,
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "128",
        "--windows",
        "1",
        "--quant-config",
        &config,
        "--database",
        &format!("{d}/db"),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(v["average_bits"].as_f64(), Some(3.0));
    assert_eq!(
        v["stored_bytes"].as_i64(),
        stored["stored_bytes"].as_integer()
    );
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(
        (ppl - held_out).abs() < 1e-9 * held_out,
        "{ppl} vs {held_out}"
    );

    ok(&[
        "baseline", "--quiet", "--config", &run_cfg, "--method", "all",
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("baselines.json")).unwrap())
            .unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    // 3 bits is not a stored width here, so there is no uniform baseline.
    assert_eq!(methods, ["dp", "random"]);
    for r in &rows {
        assert!(r["budget"]["holds"].as_bool().unwrap(), "{r}");
        assert_eq!(r["report"]["average_bits"].as_f64(), Some(3.0), "{r}");
        assert!(r["held_out_perplexity"].as_f64().unwrap().is_finite());
    }
}
