//! The `evopress` binary on the real demo model: clear errors for bad input, and the depth
//! search's determinism and crash-resume guarantees.

mod common;

use common::{evopress, model, ok, root, run};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs a command expected to fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "expected failure: evopress {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn biden() -> String {
    root()
        .join("assets/sotu/2021_joseph_r_biden_d.txt")
        .display()
        .to_string()
}

#[test]
fn eval_json_reports_perplexity() {
    let m = model().display().to_string();
    let out = run(&[
        "eval",
        "--model",
        &m,
        "--data",
        &biden(),
        "--seq-len",
        "128",
        "--windows",
        "4",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!((ppl - 31.4789).abs() / 31.4789 < 1e-3, "{ppl}");
    assert_eq!(v["tokens_scored"], 508);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
}

/// The demo model's Q4_1/Q8_0 tensors kept in their blocks (the default) and decoded to f32 at
/// load score bit-identically (decoding is exact either way); f16 rounds the decoded weights.
#[test]
fn gguf_weights_packed_f32_f16_agree() {
    let m = model().display().to_string();
    let nll = |mode: &str| {
        let out = ok(&[
            "eval",
            "--model",
            &m,
            "--data",
            &biden(),
            "--seq-len",
            "128",
            "--windows",
            "2",
            "--json",
            "--gguf-weights",
            mode,
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nll"].as_f64().unwrap()
    };
    let (packed, f32, f16) = (nll("packed"), nll("f32"), nll("f16"));
    assert_eq!(packed.to_bits(), f32.to_bits(), "{packed} vs {f32}");
    assert!((f16 - f32).abs() < 1e-3 * f32, "{f16} vs {f32}");
    let err = fails(&[
        "eval",
        "--model",
        &m,
        "--data",
        &biden(),
        "--gguf-weights",
        "q4",
    ]);
    assert!(err.contains("packed, f32, f16"), "{err}");
}

#[test]
fn truncated_gguf_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["eval", "--model", cut.to_str().unwrap(), "--data", &biden()]);
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn garbage_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model file at all, just some text").unwrap();
    let err = fails(&[
        "eval",
        "--model",
        junk.to_str().unwrap(),
        "--data",
        &biden(),
    ]);
    assert!(err.contains("junk.gguf"), "{err}");
}

#[test]
fn text_shorter_than_one_window_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let m = model().display().to_string();
    let err = fails(&[
        "eval",
        "--model",
        &m,
        "--data",
        short.to_str().unwrap(),
        "--seq-len",
        "128",
    ]);
    assert!(
        err.contains("short.txt") && err.contains("shorter than one window"),
        "{err}"
    );
}

/// A depth search small enough for a test: 4 calibration windows of 64 tokens.
fn tiny_config(dir: &Path, extra_search: &str, backend: &str) -> PathBuf {
    let text = format!(
        r#"
[model]
path = "{model}"
[calibration]
files = ["assets/sotu/17*.txt"]
seq_len = 64
windows = 6
[eval]
files = ["assets/sotu/2021_*.txt"]
seq_len = 128
windows = 1
[backend]
kind = "depth"
{backend}
[search]
generations = 5
offspring = 4
stages = [{{ survivors = 2, tokens = 64 }}, {{ survivors = 1, tokens = 128 }}]
initially_generated = 4
initial_tokens = 64
seed = 7
{extra_search}
[baselines]
tokens = 128 # the depth baselines' single-drop forwards dominate a search this small
[output]
dir = "{out}"
"#,
        model = model().display(),
        out = dir.join("out").display()
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// result.toml without the wall-clock fields.
fn result_without_timing(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("out/result.toml")).unwrap();
    text.lines()
        .filter(|l| {
            !l.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .ends_with("seconds")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn search_ok(cfg: &Path, extra: &[&str]) {
    let mut args = vec!["search", "--quiet", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn search_killed_and_resumed_equals_uninterrupted_run() {
    let backend = "sparsity = 0.1";
    let whole = tempfile::tempdir().unwrap();
    let cfg = tiny_config(whole.path(), "", backend);
    search_ok(&cfg, &[]);
    let expected = result_without_timing(whole.path());

    // Same seed twice: bit-identical results.
    let again = tempfile::tempdir().unwrap();
    search_ok(&tiny_config(again.path(), "", backend), &[]);
    assert_eq!(result_without_timing(again.path()), expected);

    // SIGKILL once a mid-run checkpoint exists, then resume.
    let killed = tempfile::tempdir().unwrap();
    let cfg = tiny_config(killed.path(), "", backend);
    let mut child = evopress(&["search", "--quiet", "--config", cfg.to_str().unwrap()])
        .spawn()
        .unwrap();
    let checkpoint = killed.path().join("out/checkpoint.json");
    let started = Instant::now();
    loop {
        let generation = std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["generation"].as_u64());
        if generation.is_some_and(|g| g >= 2) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(!killed.path().join("out/result.toml").exists());
    search_ok(&cfg, &["--resume"]);
    assert_eq!(result_without_timing(killed.path()), expected);
}

#[test]
fn infeasible_searches_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    // k = 15 whole blocks, but the legal mask allows 2.
    let legal = dir.path().join("legal.toml");
    std::fs::write(&legal, "blocks = 30\nattn = [3, 4]\nmlp = [3, 4]\n").unwrap();
    let backend = format!(
        "sparsity = 0.5\ndrop_entire_block = true\nlegal = \"{}\"",
        legal.display()
    );
    let err = fails(&[
        "search",
        "--quiet",
        "--config",
        tiny_config(dir.path(), "", &backend).to_str().unwrap(),
    ]);
    assert!(err.contains("k = 15") && err.contains("only 2"), "{err}");

    // 0 offspring.
    let cfg = tiny_config(dir.path(), "", "sparsity = 0.1");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("offspring = 4", "offspring = 0");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&["search", "--quiet", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("offspring"), "{err}");

    // One legal whole block to drop with k = 1: a single genome, too few distinct offspring.
    std::fs::write(&legal, "blocks = 30\nattn = [3]\nmlp = [3]\n").unwrap();
    let backend = format!(
        "sparsity = 0.034\ndrop_entire_block = true\nlegal = \"{}\"",
        legal.display()
    );
    let err = fails(&[
        "search",
        "--quiet",
        "--config",
        tiny_config(dir.path(), "", &backend).to_str().unwrap(),
    ]);
    assert!(err.contains("offspring"), "{err}");
}

#[test]
fn unknown_config_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "mutation_rate = 3", "sparsity = 0.1");
    let err = fails(&["search", "--quiet", "--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains("mutation_rate") && err.contains("line"),
        "{err}"
    );
}

/// `eval --kl-to-dense`: 0 for the model as loaded; positive for it with sub-blocks dropped,
/// whose perplexity is the one plain `eval` reports.
#[test]
fn eval_reports_kl_to_the_model_as_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let drop = dir.path().join("drop.toml");
    std::fs::write(&drop, "blocks = 30\nattn = [20]\nmlp = [25]\n").unwrap();
    let (m, text) = (model().display().to_string(), biden());
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            &m,
            "--data",
            &text,
            "--seq-len",
            "160",
            "--windows",
            "2",
            "--json",
        ];
        args.extend(extra);
        let v: serde_json::Value = serde_json::from_slice(&ok(&args).stdout).unwrap();
        v
    };
    let dense = eval(&["--kl-to-dense"]);
    assert_eq!(dense["kl_to_dense"].as_f64(), Some(0.0));
    assert_eq!(dense["dense_perplexity"], dense["perplexity"]);
    let drop = drop.to_str().unwrap();
    let pruned = eval(&["--kl-to-dense", "--drop-config", drop]);
    let kl = pruned["kl_to_dense"].as_f64().unwrap();
    assert!(kl > 1e-3 && kl.is_finite(), "{kl}");
    assert_eq!(pruned["dense_perplexity"], dense["perplexity"]);
    let plain = eval(&["--drop-config", drop]);
    assert_eq!(plain["perplexity"], pruned["perplexity"]);
    assert!(plain.get("kl_to_dense").is_none());
}

#[test]
fn drop_config_in_both_formats_and_exported_evaluates_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("layer_drop_config.txt");
    let mut lines = vec!["none"; 30];
    lines[20] = "attn";
    lines[25] = "attn+mlp";
    std::fs::write(&original, lines.join("\n") + "\n").unwrap();
    let ours = dir.path().join("drop.toml");
    std::fs::write(&ours, "blocks = 30\nattn = [20, 25]\nmlp = [25]\n").unwrap();
    let m = model().display().to_string();
    let text = biden();
    // Perplexity of `model` on two windows, with extra flags.
    let ppl = |model: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            model,
            "--data",
            &text,
            "--seq-len",
            "128",
            "--windows",
            "2",
            "--json",
        ];
        args.extend(extra);
        let out = ok(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let (original, ours) = (original.to_str().unwrap(), ours.to_str().unwrap());
    let a = ppl(&m, &["--drop-config", original]);
    assert_eq!(a, ppl(&m, &["--drop-config", ours]));
    assert!(a > 31.0, "dropping sub-blocks should hurt: {a}");

    // Exported as an HF directory (dropped sub-blocks as zero output projections), the
    // compressed model scores the same with no config at all.
    let export = dir.path().join("export");
    let export = export.to_str().unwrap();
    ok(&[
        "convert",
        "--model",
        &m,
        "--out",
        export,
        "--drop-config",
        original,
    ]);
    let exported = ppl(export, &[]);
    assert!(
        (exported - a).abs() <= 1e-9 * a,
        "exported {exported} vs {a}"
    );
}

#[test]
fn a_finished_run_is_refused_without_resume_or_force_and_records_its_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "", "sparsity = 0.1");
    search_ok(&cfg, &[]);
    let out = dir.path().join("out");
    let result = std::fs::read_to_string(out.join("result.toml")).unwrap();
    assert!(result.contains("fitness = \"kl\""), "{result}");
    assert!(result.contains("[[baselines]]") && result.contains("search_beats"));
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = (history.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "generation 0 and five more");
    assert!(lines.iter().all(|l| l["seconds"].as_f64().unwrap() > 0.0));
    assert!(lines[0]["seeds"].as_array().unwrap().len() >= 5);

    let err = fails(&["search", "--quiet", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    search_ok(&cfg, &["--force"]);
}

#[test]
fn a_second_writer_of_an_output_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "", "sparsity = 0.1");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    let err = fails(&["search", "--quiet", "--config", cfg.to_str().unwrap()]);
    assert!(err.contains("another evopress process"), "{err}");
}

#[test]
fn zero_counts_are_refused_and_errors_carry_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "", "sparsity = 0.1");
    let cfg = cfg.to_str().unwrap();
    let m = model().display().to_string();
    for args in [
        vec!["search", "--config", cfg, "--stop-after", "0"],
        vec!["bench", "forward", "--model", &m, "--seq-len", "0"],
        vec!["bench", "forward", "--model", &m, "--iters", "0"],
        vec!["eval", "--model", &m, "--data", "x.txt", "--windows", "0"],
    ] {
        let err = fails(&args);
        assert!(err.contains("0"), "{args:?}: {err}");
    }
    let out = evopress(&["eval", "--model", "no/such.gguf", "--data", "x.txt"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no/such.gguf"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "{err}");
}

/// `tiny_config` calibrated on `calibration` (the lines after `[calibration]`) instead.
fn tiny_config_calibrated_on(dir: &Path, calibration: &str) -> PathBuf {
    let cfg = tiny_config(dir, "", "sparsity = 0.1");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "files = [\"assets/sotu/17*.txt\"]\nseq_len = 64\nwindows = 6\n",
        calibration,
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Calibration on text the model writes itself (docs/calibration.md): no files needed, the
/// windows kept next to the results and read back by a rerun with the same settings (the
/// file is not rewritten), written anew when a setting changes.
#[test]
fn generated_calibration_is_kept_and_reused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config_calibrated_on(dir.path(), "seq_len = 64\nwindows = 0\ngenerated = 3\n");
    search_ok(&cfg, &[]);
    let kept = dir.path().join("out/generated-calibration.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    let windows = file["tokens"].as_array().unwrap();
    assert_eq!(windows.len(), 3);
    assert!(windows.iter().all(|w| w.as_array().unwrap().len() == 64));
    assert_eq!(file["text"].as_array().unwrap().len(), 3);
    let first = result_without_timing(dir.path());
    let inode = std::fs::metadata(&kept).unwrap().ino();

    search_ok(&cfg, &["--force"]);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().ino(),
        inode,
        "read back, not rewritten"
    );
    assert_eq!(result_without_timing(dir.path()), first);

    let cooler = tiny_config_calibrated_on(
        dir.path(),
        "seq_len = 64\nwindows = 0\ngenerated = 3\ntemperature = 0.5\n",
    );
    search_ok(&cooler, &["--force"]);
    let rewritten: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert_eq!(rewritten["generation"]["temperature"], 0.5);
    assert_ne!(rewritten["tokens"], file["tokens"]);
}

#[test]
fn calibration_without_windows_or_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (calibration, key) in [
        ("seq_len = 64\nwindows = 0\n", "calibration.windows"),
        (
            "seq_len = 64\nwindows = 4\ngenerated = 2\n",
            "calibration.files",
        ),
        (
            "seq_len = 64\nwindows = 0\ngenerated = 2\ntemperature = -1.0\n",
            "calibration.temperature",
        ),
        (
            "files = [\"assets/sotu/17*.txt\"]\nseq_len = 64\nwindows = 0\ngenerated = 2\n",
            "cuts no window from them",
        ),
    ] {
        let cfg = tiny_config_calibrated_on(dir.path(), calibration);
        let err = fails(&["search", "--quiet", "--config", cfg.to_str().unwrap()]);
        assert!(err.contains(key), "{calibration}: {err}");
    }
}

/// `generate` is greedy by default and at `--temperature 0`; sampling at a temperature is
/// the same for the same seed.
#[test]
fn generate_greedy_and_sampled() {
    let m = model().display().to_string();
    let ids = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &m,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "12",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["new_ids"].clone()
    };
    let greedy = ids(&[]);
    assert_eq!(ids(&["--temperature", "0"]), greedy);
    let sampled = ids(&["--temperature", "1.0", "--seed", "3"]);
    assert_eq!(ids(&["--temperature", "1.0", "--seed", "3"]), sampled);
    assert_ne!(sampled, greedy);
    let err = fails(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "x",
        "--temperature=-1",
    ]);
    assert!(err.contains("--temperature"), "{err}");
}
