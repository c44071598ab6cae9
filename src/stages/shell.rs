//! `shell`: run a command in the stage's work dir; declared outs move into the store.

use crate::exec::context::{Interrupted, StageContext};
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::manifest::value::Value;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Shell;

crate::stage_params! {
    /// Params of `shell`.
    pub struct ShellParams {
        /// command run by `sh -c` in the work dir; `${inputs.NAME}` expands to an input's path
        pub cmd: String,
        /// files or directories (relative to the work dir) the command creates; each becomes an output of that name
        pub outs: Vec<String> = Vec::<String>::new(),
        /// a JSON file (relative to the work dir) whose top-level object becomes the stage's metrics
        pub metrics: Option<String>,
        /// extra environment variables for the command
        pub env: BTreeMap<String, Value> = BTreeMap::<String, Value>::new(),
    }
}

impl KindSchema for Shell {
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
        ShellParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Any
    }

    fn outputs(&self, params: &Params) -> Vec<String> {
        // Validated params always read back; an unreadable set declares no outputs.
        ShellParams::from_params(params)
            .map(|p| p.outs)
            .unwrap_or_default()
    }
}

impl StageKind for Shell {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: ShellParams = ctx.params()?;
        let mut cmd_text = p.cmd.clone();
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
        for (k, v) in &p.env {
            let text = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            command.env(k, text);
        }
        crate::exec::die_with_parent(&mut command);
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
        if let Some(m) = &p.metrics {
            let path = ctx.work_dir.join(m);
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

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::ShellParams>();
    }
}
