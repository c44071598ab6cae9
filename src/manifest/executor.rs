//! `[executor.slurm]` (cluster defaults) and the cluster half of a stage's `resources`
//! (`cpus`, `mem`, `time`): what a cluster job asks for. None of it enters a cache key.

use super::*;

/// Cluster defaults from `[executor.slurm]`; every field is optional.
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Default time limit for every job (a stage's `resources.time` overrides it).
    pub time: Option<String>,
    /// More `sbatch` arguments, passed as they are after ours.
    pub extra_args: Vec<String>,
    /// The `runner` binary the jobs run (default: this binary), as the nodes see it.
    pub runner: Option<PathBuf>,
    /// Seconds between `squeue` polls.
    pub poll_seconds: f64,
}

impl Default for SlurmConfig {
    fn default() -> SlurmConfig {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            time: None,
            extra_args: Vec::new(),
            runner: None,
            poll_seconds: 5.0,
        }
    }
}

const SLURM_KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "time",
    "extra_args",
    "runner",
    "poll_seconds",
];

/// What one stage's cluster job asks for beyond its GPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterRequest {
    pub cpus: Option<u32>,
    /// Memory per node in Slurm's notation: a number with an optional K/M/G/T suffix.
    pub mem: Option<String>,
    /// Time limit in Slurm's notation: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
    pub time: Option<String>,
}

/// The `resources` keys that are cluster requests, not slot counts.
pub const CLUSTER_KEYS: &[&str] = &["cpus", "mem", "time"];

/// Slurm's `--mem` notation.
pub fn valid_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && s.len() - digits.len() <= 1
}

/// Slurm's `--time` notation.
pub fn valid_time(s: &str) -> bool {
    let number = |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let fields_ok = parts.iter().all(|p| number(p));
    match days {
        Some(d) => number(d) && fields_ok && (1..=3).contains(&parts.len()),
        None => fields_ok && (1..=3).contains(&parts.len()),
    }
}

impl Loader<'_> {
    /// The `[executor]` table: only `[executor.slurm]` today.
    pub(super) fn executor(&mut self, v: &Spanned<DeValue<'_>>) -> SlurmConfig {
        let mut config = SlurmConfig::default();
        let Some(t) = self.table("executor", v) else {
            return config;
        };
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "slurm" => config = self.slurm(v),
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown executor `{other}`"))
                        .suggest(other, ["slurm"]);
                    self.push(d);
                }
            }
        }
        config
    }

    fn slurm(&mut self, v: &Spanned<DeValue<'_>>) -> SlurmConfig {
        let mut c = SlurmConfig::default();
        let Some(t) = self.table("executor.slurm", v) else {
            return c;
        };
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            let what = format!("executor.slurm.{key}");
            match key {
                "partition" => c.partition = self.string(&what, v),
                "account" => c.account = self.string(&what, v),
                "qos" => c.qos = self.string(&what, v),
                "time" => c.time = self.slurm_time(&what, v),
                "runner" => c.runner = self.string(&what, v).map(PathBuf::from),
                "extra_args" => match self.value(v) {
                    Some(Value::List(items)) if items.iter().all(|i| i.as_str().is_some()) => {
                        c.extra_args = items
                            .iter()
                            .filter_map(|i| i.as_str().map(str::to_string))
                            .collect();
                    }
                    Some(_) => {
                        let o = self.at(&v.span());
                        self.err(&o, format!("`{what}` must be an array of strings"))
                            .hint = Some(r#"e.g. extra_args = ["--constraint=a100"]"#.into());
                    }
                    None => {}
                },
                "poll_seconds" => match self.value(v) {
                    Some(Value::Float(s)) if s > 0.0 && s.is_finite() => c.poll_seconds = s,
                    Some(Value::Int(s)) if s > 0 => c.poll_seconds = s as f64,
                    _ => {
                        let o = self.at(&v.span());
                        self.err(&o, format!("`{what}` must be a positive number"));
                    }
                },
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown key `{other}` in [executor.slurm]"))
                        .suggest(other, SLURM_KEYS.iter().copied());
                    self.push(d);
                }
            }
        }
        c
    }

    fn slurm_time(&mut self, what: &str, v: &Spanned<DeValue<'_>>) -> Option<String> {
        let s = self.string(what, v)?;
        if valid_time(&s) {
            return Some(s);
        }
        let o = self.at(&v.span());
        self.err(&o, format!("`{what}` = {s:?} is not a Slurm time limit"))
            .hint = Some("use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS".into());
        None
    }

    /// One `cpus`, `mem` or `time` entry of a stage's `resources`, into `request`.
    pub(super) fn cluster_entry(
        &mut self,
        request: &mut ClusterRequest,
        item: &str,
        key: &str,
        v: &Spanned<DeValue<'_>>,
    ) {
        match key {
            "cpus" => match self.value(v).and_then(|v| v.as_i64()) {
                Some(n) if (1..=4096).contains(&n) => request.cpus = Some(n as u32),
                _ => {
                    let o = self.at(&v.span());
                    self.err(&o, format!("`{item}` must be a CPU count from 1 to 4096"));
                }
            },
            "mem" => {
                if let Some(s) = self.string(item, v) {
                    if valid_mem(&s) {
                        request.mem = Some(s);
                    } else {
                        let o = self.at(&v.span());
                        self.err(&o, format!("`{item}` = {s:?} is not a memory size"))
                            .hint = Some(r#"write it as Slurm does: "32G", "500M""#.into());
                    }
                }
            }
            _ => request.time = self.slurm_time(item, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_notations() {
        for ok in ["32G", "500M", "1024", "2t"] {
            assert!(valid_mem(ok), "{ok}");
        }
        for bad in ["", "G", "32GB", "3.5G", "-1G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
        for ok in ["30", "30:00", "12:00:00", "1-12", "1-12:30", "2-00:00:00"] {
            assert!(valid_time(ok), "{ok}");
        }
        for bad in ["", "1:2:3:4", "12h", "1-", "-12", "1-2-3", "a:00"] {
            assert!(!valid_time(bad), "{bad}");
        }
    }
}
