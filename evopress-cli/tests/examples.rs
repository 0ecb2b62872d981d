//! Every file in `examples/` reads as the config its command expects, and names a method (or a
//! database kind) this build registers: the README and docs point users at these files, so a
//! renamed key or method must not leave one of them behind. Backend parameters are checked when
//! a command opens the backend with the model and its database; that needs databases the tests
//! do not build, so only the sections a config file read checks are covered here.

mod common;

use evopress_pipeline::config::split_kind;
use evopress_pipeline::{DbConfig, RunConfig};
use std::collections::BTreeSet;

/// The method kinds and database kinds `evopress methods` lists.
fn registered() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = String::from_utf8(common::ok(&["methods"]).stdout).expect("utf-8");
    let mut methods = BTreeSet::new();
    let mut databases = BTreeSet::new();
    for line in out.lines() {
        if let Some(kinds) = line.trim().strip_prefix("database kinds:") {
            databases.extend(kinds.split(',').map(|k| k.trim().to_string()));
        } else if !line.starts_with(' ') {
            methods.extend(line.split_whitespace().next().map(str::to_string));
        }
    }
    (methods, databases)
}

#[test]
fn every_example_config_reads() {
    // The examples' globs are relative to the repository root, as for a user who runs them
    // there; this binary holds this one test, so changing its directory affects nothing else.
    std::env::set_current_dir(common::root()).expect("cd to the repository root");
    let (methods, databases) = registered();
    assert!(methods.contains("depth") && databases.contains("gptq"));

    let mut paths: Vec<_> = std::fs::read_dir("examples")
        .expect("examples/")
        .map(|e| e.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() > 10, "examples/ holds {} configs", paths.len());

    for path in &paths {
        let text = std::fs::read_to_string(path).expect("read example");
        let table: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: not TOML: {e}", path.display()));
        let (kind, known) = if table.contains_key("database") {
            let cfg = DbConfig::read(path).unwrap_or_else(|e| panic!("{e}"));
            (cfg.parts().expect("checked by read").0, &databases)
        } else {
            let cfg = RunConfig::read(path).unwrap_or_else(|e| panic!("{e}"));
            let (kind, _) = split_kind(&cfg.backend, "[backend]").expect("checked by read");
            (kind, &methods)
        };
        assert!(
            known.contains(&kind),
            "{}: kind `{kind}` is not one of {known:?}",
            path.display()
        );
    }
}
