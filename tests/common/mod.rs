//! Helpers for tests that drive the `runner` binary on a scratch project.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// A `runner` command run in the project directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.current_dir(self.dir.path())
            .args(args)
            .env_remove("ADJQ_STORE")
            .env("NO_COLOR", "1");
        c
    }

    pub fn runner(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("runner starts")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.runner(args);
        assert!(
            out.status.success(),
            "runner {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The stage names recorded in `runs.log` (each test stage appends its name when it
    /// actually executes), then clears the log.
    pub fn take_runs(&self) -> Vec<String> {
        let text = self.read("runs.log");
        let _ = std::fs::remove_file(self.path("runs.log"));
        let mut v: Vec<String> = text.lines().map(String::from).collect();
        v.sort();
        v
    }

    pub fn runs_log(&self) -> String {
        self.path("runs.log").display().to_string()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
