//! The terminal side of a run: one progress bar per running stage and a line per start,
//! success and failure (hidden when stderr is not a terminal or with `--quiet`).

use crate::exec::reporter::Reporter;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub struct Bars {
    multi: MultiProgress,
    shown: bool,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new(shown: bool) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(if shown {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            shown,
            bars: Mutex::default(),
        }
    }

    fn say(&self, line: &str) {
        if self.shown {
            self.multi.suspend(|| eprintln!("{line}"));
        }
    }

    fn with_bar(&self, stage: &str, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self.bars.lock().expect("bars").get(stage) {
            f(bar);
        }
    }

    fn remove(&self, stage: &str) {
        if let Some(bar) = self.bars.lock().expect("bars").remove(stage) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed_precise}] {wide_msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed_precise}] [{bar:30.cyan/blue}] {pos}/{len} eta {eta} {wide_msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// The last `n` lines of a log, indented, for failure messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Reporter for Bars {
    fn started(&self, stage: &str, reason: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(spinner_style());
        bar.set_prefix(stage.to_string());
        bar.set_message("starting");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .expect("bars")
            .insert(stage.to_string(), bar);
        self.say(&format!("▶ {stage} ({reason})"));
    }

    fn running(&self, stage: &str) {
        self.with_bar(stage, |b| b.set_message("running"));
    }

    fn waiting(&self, stage: &str) {
        self.with_bar(stage, |b| {
            b.set_message("waiting: another runner is computing this key")
        });
    }

    fn progress(&self, stage: &str, pos: u64, len: Option<u64>, msg: &str) {
        self.with_bar(stage, |b| {
            if let Some(len) = len
                && b.length() != Some(len)
            {
                b.set_style(bar_style());
                b.set_length(len);
            }
            b.set_position(pos);
            b.set_message(msg.to_string());
        });
    }

    fn succeeded(&self, stage: &str, elapsed: Duration) {
        self.remove(stage);
        self.say(&format!("✓ {stage} ({:.1}s)", elapsed.as_secs_f64()));
    }

    fn failed(&self, stage: &str, msg: &str, log: Option<&Path>) {
        self.remove(stage);
        match log {
            Some(log) => self.say(&format!(
                "✗ {stage}: {msg}\n  log: {}\n{}",
                log.display(),
                log_tail(log, 12)
            )),
            None => self.say(&format!("✗ {stage}: {msg}")),
        }
    }

    fn note(&self, line: &str) {
        self.say(line);
    }
}
