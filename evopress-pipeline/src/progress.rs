//! Progress on stderr: bars for counted work, spinners for the rest; hidden with `quiet` and
//! when stderr is not a terminal (indicatif draws nothing there), so logs and `--json` output
//! stay clean. A log (stderr redirected to a file) gets plain lines from [`log_line`] instead.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// One line on stderr for a log file, where bars draw nothing; silent on a terminal (the bars
/// say it there) and with `quiet`.
pub fn log_line(quiet: bool, line: impl FnOnce() -> String) {
    if !quiet && !std::io::stderr().is_terminal() {
        eprintln!("{}", line());
    }
}

/// A bar over `len` steps of `what`.
pub fn bar(len: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:24}] {pos}/{len} {elapsed} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(short(what));
    pb
}

/// A spinner for work of unknown length.
pub fn spinner(what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    pb.set_message(short(what));
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Messages are cut so a bar fits on an 80-column line.
pub fn short(msg: &str) -> String {
    const MAX: usize = 40;
    if msg.chars().count() <= MAX {
        msg.to_string()
    } else {
        let head: String = msg.chars().take(MAX - 1).collect();
        format!("{head}…")
    }
}
