//! Pipeline manifests: TOML → validated [`Manifest`].
//!
//! Every error names `file:line:col` and the offending key, with a hint. Values are
//! checked against each stage kind's schema and filled with defaults, so the resulting
//! params are canonical: formatting, comments, key order and spelling a default
//! explicitly do not change them (and so do not change cache keys).

pub mod diag;
pub mod executor;
mod head;
mod interpolate;
mod overrides;
pub mod schema;
mod source;
mod stage;
mod sweep;
mod templates;
mod validate;
pub mod value;

pub use overrides::Override;
pub use source::ParamSource;
pub use sweep::grid_axis;

use diag::{Diagnostic, ManifestErrors, Origin, SourceMap};
use executor::CLUSTER_KEYS;
pub use executor::{ClusterRequest, SlurmConfig};
use interpolate::interpolate;
use schema::{InputsSpec, KindSchema, Kinds, ParamDefault, ParamType};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use sweep::type_of_value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use value::Value;

/// Resolved, typed parameters of one stage (every schema param with a value or default).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Params(pub BTreeMap<String, Value>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

/// Where a stage input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputRef {
    /// A file or directory (absolute path), hashed by content.
    Path(PathBuf),
    /// A named output of another stage.
    Stage { stage: String, output: String },
}

#[derive(Clone)]
pub struct Stage {
    pub name: String,
    pub kind: &'static dyn KindSchema,
    pub description: Option<String>,
    pub params: Params,
    /// Where each param's value came from.
    pub param_sources: BTreeMap<String, ParamSource>,
    pub inputs: BTreeMap<String, InputRef>,
    /// Slot counts the local scheduler and `[pipeline] resources` limits count.
    pub resources: BTreeMap<String, u32>,
    /// What the stage's cluster job asks for (`cpus`, `mem`, `time`).
    pub cluster: ClusterRequest,
    pub origin: Origin,
    /// Where each input was declared (for errors about it).
    pub input_origins: BTreeMap<String, Origin>,
}

impl Stage {
    /// Stages this one reads outputs of.
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.inputs.values().filter_map(|i| match i {
            InputRef::Stage { stage, .. } => Some(stage.as_str()),
            InputRef::Path(_) => None,
        })
    }
}

/// One axis of a sweep grid: `stage.param` over values.
#[derive(Clone, Debug)]
pub struct GridAxis {
    pub target: String,
    pub param: String,
    pub values: Vec<Value>,
}

impl GridAxis {
    pub fn label(&self) -> String {
        format!("{}.{}", self.target, self.param)
    }
}

#[derive(Clone, Debug, Default)]
pub struct SweepDecl {
    pub grid: Vec<GridAxis>,
    /// `stage.metric` names to tabulate.
    pub metrics: Vec<String>,
}

pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// Directory relative paths resolve against (absolute).
    pub root: PathBuf,
    /// The artifact store (absolute).
    pub store: PathBuf,
    /// Resource limits (`gpu` defaults to 1 slot).
    pub resources: BTreeMap<String, u32>,
    pub params: BTreeMap<String, Value>,
    /// In file order.
    pub stages: Vec<Stage>,
    pub sweep: SweepDecl,
    /// `[executor.slurm]`: defaults for cluster jobs.
    pub slurm: SlurmConfig,
    pub source: SourceMap,
}

impl Manifest {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }
}

const RESERVED_STAGE_KEYS: &[&str] = &["kind", "inputs", "resources", "description", "extends"];
const TOP_KEYS: &[&str] = &[
    "pipeline",
    "params",
    "templates",
    "stages",
    "sweep",
    "executor",
];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "root",
    "store",
    "defaults",
    "resources",
];

/// Loads a manifest file and applies `--set` overrides.
pub fn load(
    path: &Path,
    overrides: &[Override],
    kinds: &Kinds,
) -> Result<Manifest, ManifestErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        let map = SourceMap::new(path, "");
        ManifestErrors(vec![
            map.error(&Origin::Nowhere, format!("cannot read manifest: {e}")),
        ])
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Offsets before the first bad byte are the same in the lossy text, so its
        // line:col and the line shown (with U+FFFD for the bad bytes) are right.
        let at = e.utf8_error().valid_up_to();
        let bad = e.as_bytes()[at];
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        let map = SourceMap::new(path, &lossy);
        ManifestErrors(vec![map.error(
            &map.origin(&(at..at + 1)),
            format!("invalid UTF-8 (byte 0x{bad:02x}): a manifest must be UTF-8 text"),
        )])
    })?;
    parse(path, &text, overrides, kinds)
}

/// Parses manifest text (`path` is used for messages and to resolve relative paths).
pub fn parse(
    path: &Path,
    text: &str,
    overrides: &[Override],
    kinds: &Kinds,
) -> Result<Manifest, ManifestErrors> {
    let map = SourceMap::new(path, text);
    let doc = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        let d = map.error(&map.origin(&span), msg.clone());
        let d = if msg.contains("duplicate key") {
            d.hint("each key (and each [stages.NAME] table) may appear only once")
        } else {
            d
        };
        ManifestErrors(vec![d])
    })?;
    let mut loader = Loader {
        map: &map,
        kinds,
        errors: Vec::new(),
    };
    let manifest = loader.manifest(doc.get_ref(), overrides);
    match manifest {
        Some(m) if loader.errors.is_empty() => Ok(Manifest { source: map, ..m }),
        _ => Err(ManifestErrors(loader.errors)),
    }
}

type Entry<'a, 'i> = (
    &'a Spanned<toml::de::DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
);

struct PipelineHead {
    name: String,
    description: Option<String>,
    root: PathBuf,
    store: PathBuf,
    defaults: BTreeMap<String, (Value, Origin)>,
    resources: BTreeMap<String, u32>,
}

struct Loader<'m> {
    map: &'m SourceMap,
    kinds: &'m Kinds,
    errors: Vec<Diagnostic>,
}

impl Loader<'_> {
    fn at(&self, span: &Range<usize>) -> Origin {
        self.map.origin(span)
    }

    fn err(&mut self, origin: &Origin, msg: impl Into<String>) -> &mut Diagnostic {
        let d = self.map.error(origin, msg);
        self.errors.push(d);
        self.errors.last_mut().expect("just pushed")
    }

    fn push(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn value(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Value> {
        match value::from_toml(v.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                let o = self.at(&v.span());
                self.err(&o, e);
                None
            }
        }
    }

    fn table<'a, 'i>(
        &mut self,
        what: &str,
        v: &'a Spanned<DeValue<'i>>,
    ) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                let o = self.at(&v.span());
                let found = type_of(other);
                let d = self
                    .map
                    .error(&o, format!("`{what}` must be a table, found {found}"))
                    .hint(format!("write it as [{what}] or {what} = {{ ... }}"));
                self.push(d);
                None
            }
        }
    }

    fn string(&mut self, what: &str, v: &Spanned<DeValue<'_>>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                let o = self.at(&v.span());
                self.err(
                    &o,
                    format!("`{what}` must be a string, found {}", type_of(other)),
                );
                None
            }
        }
    }

    fn manifest(&mut self, doc: &DeTable<'_>, overrides: &[Override]) -> Option<Manifest> {
        let mut pipeline = None;
        let mut params_tbl = None;
        let mut stages_tbl = None;
        let mut sweep_tbl = None;
        let mut slurm = SlurmConfig::default();
        let mut templates_tbl = None;
        for (k, v) in doc.iter() {
            match k.get_ref().as_ref() {
                "pipeline" => pipeline = Some((k, v)),
                "params" => params_tbl = Some(v),
                "templates" => templates_tbl = Some(v),
                "stages" => stages_tbl = Some(v),
                "sweep" => sweep_tbl = Some(v),
                "executor" => slurm = self.executor(v),
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown top-level key `{other}`"))
                        .suggest(other, TOP_KEYS.iter().copied());
                    self.push(d);
                }
            }
        }

        let Some(pipeline) = pipeline else {
            let d = self
                .map
                .error(
                    &Origin::File { line: 1, col: 1 },
                    "missing [pipeline] table",
                )
                .hint("start the manifest with [pipeline] and name = \"...\"");
            self.push(d);
            return None;
        };
        let head = self.pipeline(pipeline);

        let mut params = BTreeMap::new();
        if let Some(t) = params_tbl.and_then(|v| self.table("params", v)) {
            for (k, v) in t.iter() {
                if let Some(val) = self.value(v) {
                    params.insert(k.get_ref().to_string(), val);
                }
            }
        }
        for o in overrides.iter().filter(|o| o.target == "params") {
            match params.get(&o.key) {
                None => {
                    let d = self
                        .map
                        .error(
                            &Origin::Flag(o.flag()),
                            format!("no shared param `{}`", o.key),
                        )
                        .suggest(&o.key, params.keys().map(String::as_str));
                    self.push(d);
                }
                Some(old) => {
                    let ty = type_of_value(old);
                    match ty.coerce(o.typed_for(&ty)) {
                        Ok(v) => {
                            params.insert(o.key.clone(), v);
                        }
                        Err(e) => {
                            self.err(&Origin::Flag(o.flag()), e);
                        }
                    }
                }
            }
        }

        let stage_entries: Vec<Entry> = match stages_tbl.and_then(|v| self.table("stages", v)) {
            Some(t) => t.iter().collect(),
            None => Vec::new(),
        };
        if let Some(tbl) = stages_tbl
            && stage_entries.is_empty()
            && self.errors.is_empty()
        {
            let o = self.at(&tbl.span());
            self.err(&o, "[stages] is empty").hint =
                Some("add a stage: [stages.NAME] with kind = \"...\"".into());
        }
        if stages_tbl.is_none() {
            let o = self.at(&pipeline.0.span());
            self.err(&o, "manifest declares no stages").hint =
                Some("add a stage: [stages.NAME] with kind = \"shell\" and cmd = \"...\"".into());
        }
        let stage_names: Vec<String> = stage_entries
            .iter()
            .map(|(k, _)| k.get_ref().to_string())
            .collect();
        for o in overrides.iter().filter(|o| o.target != "params") {
            if !stage_names.contains(&o.target) {
                let d = self
                    .map
                    .error(&Origin::Flag(o.flag()), format!("no stage `{}`", o.target))
                    .suggest(&o.target, stage_names.iter().map(String::as_str));
                self.push(d);
            }
        }

        let templates = self.templates(templates_tbl);
        let mut stages = Vec::new();
        for (k, v) in &stage_entries {
            let mine: Vec<&Override> = overrides
                .iter()
                .filter(|o| o.target == k.get_ref().as_ref())
                .collect();
            let Some(t) = self.table(&format!("stages.{}", k.get_ref()), v) else {
                continue;
            };
            let before = self.errors.len();
            let (table, template) = match self.extend(k.get_ref(), t, &templates) {
                Some(x) => x,
                None => continue,
            };
            let mut stage = self.stage(k, &table, &params, &head.defaults, &mine, &head);
            if let Some(s) = &mut stage {
                s.param_sources = refine_sources(
                    std::mem::take(&mut s.param_sources),
                    template.as_ref(),
                    overrides,
                );
            }
            if let Some((name, lines)) = template {
                // Errors in the template's lines name the stage that extends it too.
                let at = match self.at(&k.span()) {
                    Origin::File { line, .. } => format!(" (line {line})"),
                    _ => String::new(),
                };
                for d in &mut self.errors[before..] {
                    if matches!(d.origin, Origin::File { line, .. } if lines.contains(&line)) {
                        d.note = Some(format!(
                            "in template `{name}`, which stage `{}`{at} extends",
                            k.get_ref()
                        ));
                    }
                }
            }
            if let Some(s) = stage {
                stages.push(s);
            }
        }
        self.check_references(&stages);
        if self.errors.is_empty() {
            self.check_cycles(&stages);
        }
        let sweep = match sweep_tbl {
            Some(v) => self.sweep(v, &stages, &params),
            None => SweepDecl::default(),
        };
        Some(Manifest {
            path: self.map.path.clone(),
            name: head.name,
            description: head.description,
            root: head.root,
            store: head.store,
            resources: head.resources,
            params,
            stages,
            sweep,
            slurm,
            source: self.map.clone(),
        })
    }
}

/// Sources as the stage table saw them, refined: lines that came from the template the
/// stage extends name it, and shared params name the flag or axis that set them.
fn refine_sources(
    sources: BTreeMap<String, ParamSource>,
    template: Option<&(String, BTreeSet<usize>)>,
    overrides: &[Override],
) -> BTreeMap<String, ParamSource> {
    let from_template = |line: usize| template.filter(|(_, lines)| lines.contains(&line));
    sources
        .into_iter()
        .map(|(param, src)| {
            let src = match src {
                ParamSource::Stage { line } => match from_template(line) {
                    Some((name, _)) => ParamSource::Template {
                        name: name.clone(),
                        line,
                    },
                    None => ParamSource::Stage { line },
                },
                ParamSource::Shared { name, line, .. } => ParamSource::Shared {
                    set: overrides
                        .iter()
                        .rfind(|o| o.target == "params" && o.key == name)
                        .map(|o| o.source().to_string()),
                    name,
                    line,
                },
                other => other,
            };
            (param, src)
        })
        .collect()
}

fn type_of(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Lexically removes `.` and `..` components (the path need not exist).
/// A path with `.` and `..` resolved lexically (as manifest paths are).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
