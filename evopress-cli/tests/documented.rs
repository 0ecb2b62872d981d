//! What the README and `examples/` tell users to run exists in this build: every config file in
//! `examples/` reads as the config its command expects and names a registered method (or
//! database kind), and every command line of the README's command list names a subcommand and
//! flags the binary has. Renaming a key, a flag or a method must not leave them behind.
//! Backend parameters are checked when a command opens the backend with the model and its
//! database; that needs databases the tests do not build, so only what a config file read
//! checks is covered here.

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

/// The `evopress ...` lines of the README's command list, each joined with the indented lines
/// that continue it.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Commands\n")
        .nth(1)
        .expect("README has a `## Commands` section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the command list is a fenced block");
    let mut commands: Vec<String> = Vec::new();
    for line in block.lines() {
        let code = line.split(" # ").next().unwrap_or("").trim_end();
        if code.starts_with("evopress ") {
            commands.push(code.to_string());
        } else if code.starts_with(' ') && !code.trim().is_empty() {
            if let Some(last) = commands.last_mut() {
                last.push(' ');
                last.push_str(code.trim());
            }
        }
    }
    commands
}

#[test]
fn readme_commands_exist() {
    let commands = readme_commands();
    assert!(commands.len() > 10, "found {} commands", commands.len());
    for command in &commands {
        // The subcommand path: every word before the first flag or option group.
        let sub: Vec<&str> = command
            .split_whitespace()
            .skip(1)
            .take_while(|w| !w.starts_with('-') && !w.starts_with('['))
            .collect();
        let mut args = sub.clone();
        args.push("--help");
        let help = String::from_utf8(common::ok(&args).stdout).expect("utf-8");
        let flags = command
            .split(|c: char| c.is_whitespace() || "[]|".contains(c))
            .filter(|w| w.starts_with("--"))
            .map(|w| w.split('=').next().unwrap_or(w));
        for flag in flags {
            assert!(
                help.split(|c: char| c.is_whitespace() || c == ',')
                    .any(|w| w == flag),
                "README: `{command}`: `evopress {}` has no {flag}",
                sub.join(" ")
            );
        }
    }
}
