//! `shell`: run a command in the stage's work dir; declared outs move into the store.

use super::{InputsSpec, StageKind};
use crate::exec::context::{Interrupted, StageContext};
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Shell;

static STRING: T = T::Str;

static PARAMS: &[ParamSpec] = &[
    ParamSpec::new(
        "cmd",
        T::Str,
        D::Required,
        "command run by `sh -c` in the work dir; `${inputs.NAME}` expands to an input's path",
    ),
    ParamSpec::new(
        "outs",
        T::List(&STRING),
        D::Toml("[]"),
        "files or directories (relative to the work dir) the command creates; each becomes an output of that name",
    ),
    ParamSpec::new(
        "metrics",
        T::Str,
        D::Absent,
        "a JSON file (relative to the work dir) whose top-level object becomes the stage's metrics",
    ),
    ParamSpec::new(
        "env",
        T::Table,
        D::Toml("{}"),
        "extra environment variables for the command",
    ),
];

impl StageKind for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn version(&self) -> u32 {
        1
    }

    fn doc(&self) -> &'static str {
        "Runs a shell command in the stage's work dir, which persists across interruptions so \
         the command can resume. Inputs are exposed as ${inputs.NAME} in `cmd` and as the \
         environment variables ADJQ_INPUT_<NAME>; ADJQ_WORK_DIR is the work dir. Declared \
         `outs` are moved into the store when the command succeeds."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Any
    }

    fn outputs(&self, params: &Params) -> Vec<String> {
        params.strings("outs")
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let mut cmd_text = ctx.params.str("cmd").unwrap_or_default().to_string();
        for (name, path) in &ctx.inputs {
            cmd_text = cmd_text.replace(
                &format!("${{inputs.{name}}}"),
                &shell_quote(&path.display().to_string()),
            );
        }
        if let Some(i) = cmd_text.find("${inputs.") {
            let rest = &cmd_text[i..];
            let end = rest.find('}').map(|e| e + 1).unwrap_or(rest.len());
            bail!(
                "`cmd` refers to {} but the stage declares no such input",
                &rest[..end]
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ctx.log_path)
            .with_context(|| format!("cannot open log {}", ctx.log_path.display()))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&cmd_text)
            .current_dir(&ctx.work_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("ADJQ_WORK_DIR", &ctx.work_dir)
            .env("ADJQ_STAGE", &ctx.stage)
            .env("ADJQ_KEY", &ctx.key)
            .env("ADJQ_RESUMED", if ctx.resumed { "1" } else { "0" })
            .process_group(0);
        for (name, path) in &ctx.inputs {
            command.env(format!("ADJQ_INPUT_{}", env_name(name)), path);
        }
        if let Some(crate::manifest::value::Value::Table(env)) = ctx.params.get("env") {
            for (k, v) in env {
                let text = v
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                command.env(k, text);
            }
        }
        super::super::exec::die_with_parent(&mut command);
        tracing::info!("$ {cmd_text}");
        let mut child = command.spawn().context("cannot start `sh`")?;
        let pgid = child.id() as i32;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if ctx.interrupted() {
                stop_group(pgid, &mut child);
                bail!(Interrupted);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            match status.code() {
                Some(c) => bail!("command exited with status {c}: {cmd_text}"),
                None => bail!("command was killed by a signal: {cmd_text}"),
            }
        }
        if let Some(m) = ctx.params.str("metrics").map(String::from) {
            let path = ctx.work_dir.join(&m);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("metrics file {} not found", path.display()))?;
            let parsed: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("metrics file {} is not a JSON object", path.display()))?;
            ctx.metrics.extend(parsed);
        }
        Ok(())
    }
}

/// SIGTERM to the command's process group; SIGKILL if it has not gone after 10 s.
fn stop_group(pgid: i32, child: &mut std::process::Child) {
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    for _ in 0..500 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

fn env_name(input: &str) -> String {
    input
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
