//! What the executor tells the user while it runs. Library code reports through this
//! trait and never touches the terminal; the command line draws progress bars with it.

use std::path::Path;
use std::time::Duration;

pub trait Reporter: Sync {
    /// Stage `stage` starts, and why it runs (new, changed param, forced…).
    fn started(&self, stage: &str, reason: &str);
    /// The stage's process is running.
    fn running(&self, stage: &str);
    /// Another runner holds the stage's key; this one waits for it.
    fn waiting(&self, stage: &str);
    /// Progress within a stage: `pos` of `len` (unknown length: a spinner).
    fn progress(&self, stage: &str, pos: u64, len: Option<u64>, msg: &str);
    fn succeeded(&self, stage: &str, elapsed: Duration);
    /// The stage failed: the message, and its log when it ran.
    fn failed(&self, stage: &str, msg: &str, log: Option<&Path>);
    /// A line about the run as a whole (stopping on a signal…).
    fn note(&self, line: &str);
}
