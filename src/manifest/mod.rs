//! Pipeline manifests: TOML → validated [`Manifest`].
//!
//! Every error names `file:line:col` and the offending key, with a hint. Values are
//! checked against each stage kind's schema and filled with defaults, so the resulting
//! params are canonical: formatting, comments, key order and spelling a default
//! explicitly do not change them (and so do not change cache keys).

pub mod diag;
pub mod schema;
pub mod value;

use diag::{Diagnostic, ManifestErrors, Origin, SourceMap};
use schema::{InputsSpec, KindSchema, Kinds, ParamDefault, ParamType};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
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
    pub inputs: BTreeMap<String, InputRef>,
    pub resources: BTreeMap<String, u32>,
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

/// A `--set target.key=value` override (target is a stage name or `params`).
#[derive(Clone, Debug)]
pub struct Override {
    pub target: String,
    pub key: String,
    pub text: String,
    pub value: Value,
}

impl Override {
    pub fn parse(flag: &str) -> Result<Override, String> {
        let (path, text) = flag
            .split_once('=')
            .ok_or_else(|| format!("`{flag}` is not of the form stage.param=value"))?;
        let (target, key) = path
            .split_once('.')
            .ok_or_else(|| format!("`{path}` must be stage.param or params.name"))?;
        if target.is_empty() || key.is_empty() {
            return Err(format!("`{path}` must be stage.param or params.name"));
        }
        Ok(Override {
            target: target.to_string(),
            key: key.to_string(),
            text: text.to_string(),
            value: Value::parse_cli(text),
        })
    }

    fn flag(&self) -> String {
        format!("--set {}.{}={}", self.target, self.key, self.text)
    }

    /// The value as the declared type wants it: a string param takes the text verbatim.
    fn typed_for(&self, ty: &ParamType) -> Value {
        if ty.wants_string() {
            Value::Str(self.text.clone())
        } else {
            self.value.clone()
        }
    }
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
const TOP_KEYS: &[&str] = &["pipeline", "params", "templates", "stages", "sweep"];
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
        let mut templates_tbl = None;
        for (k, v) in doc.iter() {
            match k.get_ref().as_ref() {
                "pipeline" => pipeline = Some((k, v)),
                "params" => params_tbl = Some(v),
                "templates" => templates_tbl = Some(v),
                "stages" => stages_tbl = Some(v),
                "sweep" => sweep_tbl = Some(v),
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
            let stage = self.stage(k, &table, &params, &head.defaults, &mine, &head);
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
            source: self.map.clone(),
        })
    }

    fn pipeline(&mut self, (key, v): Entry<'_, '_>) -> PipelineHead {
        let manifest_dir = self
            .map
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let manifest_dir = std::path::absolute(if manifest_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &manifest_dir
        })
        .unwrap_or_default();
        let mut head = PipelineHead {
            name: String::new(),
            description: None,
            root: manifest_dir.clone(),
            store: PathBuf::from("artifacts"),
            defaults: BTreeMap::new(),
            resources: BTreeMap::from([("gpu".to_string(), 1)]),
        };
        let Some(t) = self.table("pipeline", v) else {
            return head;
        };
        let mut name = None;
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "name" => name = self.string("pipeline.name", v),
                "description" => head.description = self.string("pipeline.description", v),
                "root" => {
                    if let Some(r) = self.string("pipeline.root", v) {
                        head.root = normalize(&manifest_dir.join(r));
                    }
                }
                "store" => {
                    if let Some(s) = self.string("pipeline.store", v) {
                        head.store = PathBuf::from(s);
                    }
                }
                "defaults" => {
                    if let Some(t) = self.table("pipeline.defaults", v) {
                        for (dk, dv) in t.iter() {
                            let name = dk.get_ref().to_string();
                            let known = self
                                .kinds
                                .iter()
                                .any(|kind| kind.params().iter().any(|p| p.name == name));
                            if !known {
                                let o = self.at(&dk.span());
                                let all: BTreeSet<&str> = self
                                    .kinds
                                    .iter()
                                    .flat_map(|k| k.params().iter().map(|p| p.name))
                                    .collect();
                                let d = self
                                    .map
                                    .error(
                                        &o,
                                        format!(
                                            "default `{name}` is not a param of any stage kind"
                                        ),
                                    )
                                    .suggest(&name, all);
                                self.push(d);
                            } else if let Some(val) = self.value(dv) {
                                head.defaults.insert(name, (val, self.at(&dv.span())));
                            }
                        }
                    }
                }
                "resources" => {
                    head.resources
                        .extend(self.resources("pipeline.resources", v));
                }
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown key `{other}` in [pipeline]"))
                        .suggest(other, PIPELINE_KEYS.iter().copied());
                    self.push(d);
                }
            }
        }
        match name {
            Some(n) if valid_name(&n) => head.name = n,
            Some(n) => {
                let o = self.at(&key.span());
                self.err(&o, format!("pipeline name `{n}` is not valid"))
                    .hint = Some("use letters, digits, `_` and `-`".into());
            }
            None => {
                let o = self.at(&key.span());
                self.err(&o, "[pipeline] has no `name`").hint =
                    Some("add name = \"my-pipeline\"".into());
            }
        }
        head.store = normalize(&head.root.join(&head.store));
        head
    }

    fn resources(&mut self, what: &str, v: &Spanned<DeValue<'_>>) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(what, v) else {
            return out;
        };
        for (k, v) in t.iter() {
            match v.get_ref() {
                DeValue::Integer(_) => match self.value(v).and_then(|v| v.as_i64()) {
                    Some(n) if (0..=1024).contains(&n) => {
                        out.insert(k.get_ref().to_string(), n as u32);
                    }
                    _ => {
                        let o = self.at(&v.span());
                        self.err(
                            &o,
                            format!("`{what}.{}` must be between 0 and 1024", k.get_ref()),
                        );
                    }
                },
                other => {
                    let o = self.at(&v.span());
                    self.err(
                        &o,
                        format!(
                            "`{what}.{}` must be an integer slot count, found {}",
                            k.get_ref(),
                            type_of(other)
                        ),
                    );
                }
            }
        }
        out
    }

    /// `[templates.NAME]` tables: stage keys that stages take with `extends = "NAME"`.
    fn templates<'a, 'i>(
        &mut self,
        v: Option<&'a Spanned<DeValue<'i>>>,
    ) -> BTreeMap<String, &'a DeTable<'i>> {
        let mut out = BTreeMap::new();
        let Some(t) = v.and_then(|v| self.table("templates", v)) else {
            return out;
        };
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let Some(body) = self.table(&format!("templates.{name}"), v) else {
                continue;
            };
            if let Some((ek, _)) = body.get_key_value("extends") {
                let o = self.at(&ek.span());
                self.err(
                    &o,
                    format!("template `{name}` cannot extend another template"),
                )
                .hint = Some("give each stage one template; put shared keys in it".into());
                continue;
            }
            out.insert(name, body);
        }
        out
    }

    /// A stage's table with the keys of the template it `extends` (the stage's own keys
    /// win; `inputs` and `resources` merge key by key), and the template's name and lines.
    #[allow(clippy::type_complexity)]
    fn extend<'i>(
        &mut self,
        stage: &str,
        t: &DeTable<'i>,
        templates: &BTreeMap<String, &DeTable<'i>>,
    ) -> Option<(DeTable<'i>, Option<(String, BTreeSet<usize>)>)> {
        let Some(ev) = t.get("extends") else {
            return Some((t.clone(), None));
        };
        let name = self.string(&format!("stages.{stage}.extends"), ev)?;
        let Some(template) = templates.get(&name) else {
            let o = self.at(&ev.span());
            let d = self.map.error(
                &o,
                format!("stage `{stage}` extends unknown template `{name}`"),
            );
            let d = if templates.is_empty() {
                d.hint(format!("declare it as [templates.{name}]"))
            } else {
                d.suggest(&name, templates.keys().map(String::as_str))
            };
            self.push(d);
            return None;
        };
        let mut merged = (*template).clone();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if key == "extends" {
                continue;
            }
            if let (Some(DeValue::Table(base)), DeValue::Table(own)) =
                (merged.get(key).map(|b| b.get_ref()), v.get_ref())
                && ["inputs", "resources"].contains(&key)
            {
                let mut both = base.clone();
                for (ik, iv) in own.iter() {
                    both.remove(ik.get_ref().as_ref());
                    both.insert(ik.clone(), iv.clone());
                }
                merged.remove(key);
                merged.insert(k.clone(), Spanned::new(v.span(), DeValue::Table(both)));
                continue;
            }
            merged.remove(key);
            merged.insert(k.clone(), v.clone());
        }
        let mut lines = BTreeSet::new();
        for (k, v) in template.iter() {
            if let (Origin::File { line: a, .. }, Origin::File { line: b, .. }) = (
                self.at(&k.span()),
                self.at(&(v.span().end.saturating_sub(1)..v.span().end)),
            ) {
                lines.extend(a..=b);
            }
        }
        Some((merged, Some((name, lines))))
    }

    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        key: &Spanned<toml::de::DeString<'_>>,
        t: &DeTable<'_>,
        shared: &BTreeMap<String, Value>,
        defaults: &BTreeMap<String, (Value, Origin)>,
        overrides: &[&Override],
        head: &PipelineHead,
    ) -> Option<Stage> {
        let name = key.get_ref().to_string();
        let origin = self.at(&key.span());
        if !valid_name(&name) {
            self.err(&origin, format!("stage name `{name}` is not valid"))
                .hint = Some(
                "use letters, digits, `_` and `-` (no dots: `stage.param` must be unambiguous)"
                    .into(),
            );
            return None;
        }
        let kind = match t.get("kind") {
            None => {
                let kinds: Vec<&str> = self.kinds.names().collect();
                self.err(&origin, format!("stage `{name}` has no `kind`"))
                    .hint = Some(format!("add kind = \"...\", one of: {}", kinds.join(", ")));
                return None;
            }
            Some(kv) => {
                let kname = self.string(&format!("stages.{name}.kind"), kv)?;
                match self.kinds.find(&kname) {
                    Some(k) => k,
                    None => {
                        let o = self.at(&kv.span());
                        let d = self
                            .map
                            .error(&o, format!("unknown stage kind `{kname}`"))
                            .suggest(&kname, self.kinds.names());
                        self.push(d);
                        return None;
                    }
                }
            }
        };
        for o in overrides {
            if RESERVED_STAGE_KEYS.contains(&o.key.as_str()) {
                self.err(
                    &Origin::Flag(o.flag()),
                    format!("`{}` cannot be overridden, only params can", o.key),
                );
            }
        }

        let specs = kind.params();
        let mut params = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        let mut resources = BTreeMap::new();
        let mut description = None;
        // Params that were set, valid or not (an invalid one is not also reported missing).
        let mut set: BTreeSet<String> = overrides.iter().map(|o| o.key.clone()).collect();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            set.insert(key.to_string());
            match key {
                "kind" => {}
                "description" => {
                    description = self.string(&format!("stages.{name}.description"), v)
                }
                "inputs" => inputs = self.inputs(&name, kind, v, head, shared),
                "resources" => {
                    resources = self.resources(&format!("stages.{name}.resources"), v);
                }
                _ => {
                    let Some(spec) = specs.iter().find(|s| s.name == key) else {
                        let o = self.at(&k.span());
                        let known = specs
                            .iter()
                            .map(|s| s.name)
                            .chain(RESERVED_STAGE_KEYS.iter().copied());
                        let d = self
                            .map
                            .error(
                                &o,
                                format!(
                                    "unknown param `{key}` for stage `{name}` of kind `{}`",
                                    kind.name()
                                ),
                            )
                            .suggest(key, known);
                        self.push(d);
                        continue;
                    };
                    let Some(raw) = self.value(v) else { continue };
                    let o = self.at(&v.span());
                    let from_file = overrides.iter().all(|ov| ov.key != key);
                    if from_file
                        && let Some(val) = self.typed(&o, &name, spec.name, &spec.ty, raw, shared)
                    {
                        params.insert(key.to_string(), val);
                    }
                }
            }
        }
        for ov in overrides {
            if RESERVED_STAGE_KEYS.contains(&ov.key.as_str()) {
                continue;
            }
            let o = Origin::Flag(ov.flag());
            match specs.iter().find(|s| s.name == ov.key) {
                None => {
                    let d = self
                        .map
                        .error(
                            &o,
                            format!(
                                "unknown param `{}` for stage `{name}` of kind `{}`",
                                ov.key,
                                kind.name()
                            ),
                        )
                        .suggest(&ov.key, specs.iter().map(|s| s.name));
                    self.push(d);
                }
                Some(spec) => {
                    let raw = ov.typed_for(&spec.ty);
                    if let Some(val) = self.typed(&o, &name, spec.name, &spec.ty, raw, shared) {
                        params.insert(ov.key.clone(), val);
                    }
                }
            }
        }
        for spec in specs {
            if params.contains_key(spec.name) || set.contains(spec.name) {
                continue;
            }
            if let Some((v, o)) = defaults.get(spec.name) {
                if let Some(val) = self.typed(o, &name, spec.name, &spec.ty, v.clone(), shared) {
                    params.insert(spec.name.to_string(), val);
                }
                continue;
            }
            match &spec.default {
                ParamDefault::Required => {
                    self.err(
                        &origin,
                        format!(
                            "stage `{name}` (kind `{}`) is missing required param `{}`",
                            kind.name(),
                            spec.name
                        ),
                    )
                    .hint = Some(format!("{}: {} ({})", spec.name, spec.doc, spec.ty));
                }
                ParamDefault::Absent => {}
                ParamDefault::Value(v) => {
                    params.insert(spec.name.to_string(), v.clone());
                }
            }
        }
        let params = Params(params);

        let mut all_resources = kind.resources(&params);
        all_resources.extend(resources);
        for (r, n) in &all_resources {
            match head.resources.get(r) {
                None => {
                    let d = self
                        .map
                        .error(
                            &origin,
                            format!("stage `{name}` uses unknown resource `{r}`"),
                        )
                        .suggest(r, head.resources.keys().map(String::as_str));
                    let d = if d
                        .hint
                        .as_deref()
                        .is_some_and(|h| h.starts_with("did you mean"))
                    {
                        d
                    } else {
                        d.hint(format!(
                            "declare a limit in [pipeline] resources = {{ {r} = N }}"
                        ))
                    };
                    self.push(d);
                }
                Some(limit) if n > limit => {
                    self.err(
                        &origin,
                        format!(
                            "stage `{name}` needs {n} `{r}` slots but the pipeline allows {limit}"
                        ),
                    );
                }
                _ => {}
            }
        }

        if let InputsSpec::Named(specs) = kind.inputs() {
            for spec in specs.iter().filter(|s| s.required) {
                if !inputs.contains_key(spec.name) {
                    self.err(
                        &origin,
                        format!(
                            "stage `{name}` (kind `{}`) is missing required input `{}`",
                            kind.name(),
                            spec.name
                        ),
                    )
                    .hint = Some(format!("inputs.{}: {}", spec.name, spec.doc));
                }
            }
        }
        Some(Stage {
            name,
            kind,
            description,
            params,
            input_origins: inputs
                .iter()
                .map(|(k, (_, o))| (k.clone(), o.clone()))
                .collect(),
            inputs: inputs.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            resources: all_resources,
            origin,
        })
    }

    /// Interpolates `${params.x}` and checks the result against the declared type.
    fn typed(
        &mut self,
        origin: &Origin,
        stage: &str,
        param: &str,
        ty: &ParamType,
        raw: Value,
        shared: &BTreeMap<String, Value>,
    ) -> Option<Value> {
        let whole_reference =
            matches!(&raw, Value::Str(s) if s.starts_with("${params.") && s.ends_with('}'));
        let interpolated = match interpolate(raw, shared) {
            Ok(v) => v,
            Err((msg, hint)) => {
                let d = self
                    .map
                    .error(origin, format!("stage `{stage}`, param `{param}`: {msg}"));
                self.push(match hint {
                    Some(h) => d.hint(h),
                    None => d,
                });
                return None;
            }
        };
        // `cmd = "${params.lr}"` means the text of the value when the param is a string.
        let interpolated = match interpolated {
            v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_))
                if whole_reference && ty.wants_string() =>
            {
                Value::Str(v.to_string())
            }
            v => v,
        };
        match ty.coerce(interpolated) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(origin, format!("stage `{stage}`, param `{param}`: {e}"));
                None
            }
        }
    }

    fn inputs(
        &mut self,
        stage: &str,
        kind: &dyn KindSchema,
        v: &Spanned<DeValue<'_>>,
        head: &PipelineHead,
        shared: &BTreeMap<String, Value>,
    ) -> BTreeMap<String, (InputRef, Origin)> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(&format!("stages.{stage}.inputs"), v) else {
            return out;
        };
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let o = self.at(&k.span());
            if let InputsSpec::Named(specs) = kind.inputs()
                && !specs.iter().any(|s| s.name == name)
            {
                let d = self
                    .map
                    .error(
                        &o,
                        format!(
                            "stage `{stage}` (kind `{}`) has no input `{name}`",
                            kind.name()
                        ),
                    )
                    .suggest(&name, specs.iter().map(|s| s.name));
                self.push(d);
                continue;
            }
            if !valid_name(&name) {
                self.err(&o, format!("input name `{name}` is not valid"))
                    .hint = Some("use letters, digits, `_` and `-`".into());
                continue;
            }
            let vo = self.at(&v.span());
            let form_hint = "an input is a path string, { path = \"...\" } or { stage = \"NAME\", output = \"OUT\" }";
            let parsed = match v.get_ref() {
                // Paths may come from shared params: `inputs.data = "${params.imagenet}"`.
                DeValue::String(s) => match interpolate(Value::Str(s.to_string()), shared) {
                    Ok(Value::Str(path)) => Some(InputRef::Path(normalize(&head.root.join(path)))),
                    Ok(other) => {
                        self.err(
                            &vo,
                            format!(
                                "input `{name}` must be a path, but the reference gives {}",
                                other.type_name()
                            ),
                        );
                        None
                    }
                    Err((msg, hint)) => {
                        let d = self.map.error(&vo, format!("input `{name}`: {msg}"));
                        self.push(match hint {
                            Some(h) => d.hint(h),
                            None => d,
                        });
                        None
                    }
                },
                DeValue::Table(t) => {
                    let get = |key: &str| match t.get(key).map(|v| v.get_ref()) {
                        Some(DeValue::String(s)) => Some(s.to_string()),
                        _ => None,
                    };
                    let keys: BTreeSet<&str> =
                        t.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
                    if keys == BTreeSet::from(["path"]) && get("path").is_some() {
                        Some(InputRef::Path(normalize(
                            &head.root.join(get("path").expect("checked")),
                        )))
                    } else if keys == BTreeSet::from(["stage", "output"])
                        && get("stage").is_some()
                        && get("output").is_some()
                    {
                        Some(InputRef::Stage {
                            stage: get("stage").expect("checked"),
                            output: get("output").expect("checked"),
                        })
                    } else {
                        let found: Vec<&str> = keys.into_iter().collect();
                        self.err(
                            &vo,
                            format!("input `{name}` has keys {{{}}}", found.join(", ")),
                        )
                        .hint = Some(form_hint.into());
                        None
                    }
                }
                other => {
                    self.err(
                        &vo,
                        format!(
                            "input `{name}` must be a path or a table, found {}",
                            type_of(other)
                        ),
                    )
                    .hint = Some(form_hint.into());
                    None
                }
            };
            if let Some(r) = parsed {
                out.insert(name, (r, vo));
            }
        }
        out
    }

    fn check_references(&mut self, stages: &[Stage]) {
        for s in stages {
            for (input, r) in &s.inputs {
                let InputRef::Stage { stage, output } = r else {
                    continue;
                };
                let o = s.input_origins[input].clone();
                if stage == &s.name {
                    self.err(
                        &o,
                        format!(
                            "stage `{}` input `{input}` refers to the stage itself",
                            s.name
                        ),
                    )
                    .hint = Some("a stage cannot read its own outputs".into());
                    continue;
                }
                let Some(up) = stages.iter().find(|u| &u.name == stage) else {
                    let d = self
                        .map
                        .error(
                            &o,
                            format!(
                                "stage `{}` input `{input}` refers to undefined stage `{stage}`",
                                s.name
                            ),
                        )
                        .suggest(stage, stages.iter().map(|u| u.name.as_str()));
                    self.push(d);
                    continue;
                };
                let outs = up.kind.outputs(&up.params);
                if !outs.contains(output) {
                    let d = self
                        .map
                        .error(
                            &o,
                            format!("stage `{}` input `{input}`: stage `{stage}` has no output `{output}`", s.name),
                        )
                        .suggest(output, outs.iter().map(String::as_str));
                    let d = if outs.is_empty() {
                        d.hint(format!("stage `{stage}` declares no outputs"))
                    } else {
                        d
                    };
                    self.push(d);
                }
            }
        }
    }

    fn check_cycles(&mut self, stages: &[Stage]) {
        let mut g = petgraph::graph::DiGraph::<usize, ()>::new();
        let nodes: Vec<_> = (0..stages.len()).map(|i| g.add_node(i)).collect();
        for (i, s) in stages.iter().enumerate() {
            for up in s.upstream() {
                if let Some(j) = stages.iter().position(|u| u.name == up) {
                    g.add_edge(nodes[j], nodes[i], ());
                }
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            if scc.len() < 2 {
                continue;
            }
            let mut members: Vec<usize> = scc.iter().map(|n| g[*n]).collect();
            members.sort();
            let names: Vec<&str> = members.iter().map(|i| stages[*i].name.as_str()).collect();
            let first = &stages[members[0]];
            self.err(
                &first.origin,
                format!(
                    "dependency cycle between stages: {} -> {}",
                    names.join(" -> "),
                    names[0]
                ),
            )
            .hint =
                Some("a stage cannot (indirectly) read its own outputs; break the cycle".into());
        }
    }

    fn sweep(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        stages: &[Stage],
        shared: &BTreeMap<String, Value>,
    ) -> SweepDecl {
        let mut decl = SweepDecl::default();
        let Some(t) = self.table("sweep", v) else {
            return decl;
        };
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "grid" => {
                    let Some(grid) = self.table("sweep.grid", v) else {
                        continue;
                    };
                    for (gk, gv) in grid.iter() {
                        let o = self.at(&gk.span());
                        let label = gk.get_ref().to_string();
                        let Some(values) = self.value(gv) else {
                            continue;
                        };
                        match grid_axis(&label, values, stages, shared) {
                            Ok(axis) => decl.grid.push(axis),
                            Err((msg, hint)) => {
                                let d = self.map.error(&o, format!("sweep.grid: {msg}"));
                                self.push(match hint {
                                    Some(h) => d.hint(h),
                                    None => d,
                                });
                            }
                        }
                    }
                }
                "metrics" => {
                    let o = self.at(&v.span());
                    match self.value(v) {
                        Some(Value::List(items)) => {
                            for item in items {
                                match item.as_str().and_then(|s| s.split_once('.')) {
                                    Some((st, _)) if stages.iter().any(|s| s.name == st) => {
                                        decl.metrics.push(item.as_str().expect("str").to_string());
                                    }
                                    Some((st, _)) => {
                                        let d = self
                                            .map
                                            .error(&o, format!("sweep.metrics: no stage `{st}`"))
                                            .suggest(st, stages.iter().map(|s| s.name.as_str()));
                                        self.push(d);
                                    }
                                    None => {
                                        self.err(
                                            &o,
                                            format!(
                                                "sweep.metrics: `{item}` is not \"stage.metric\""
                                            ),
                                        );
                                    }
                                }
                            }
                        }
                        Some(other) => {
                            self.err(&o, format!("sweep.metrics must be an array of \"stage.metric\" strings, found {}", other.type_name()));
                        }
                        None => {}
                    }
                }
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown key `{other}` in [sweep]"))
                        .suggest(other, ["grid", "metrics"]);
                    self.push(d);
                }
            }
        }
        decl
    }
}

/// Builds a sweep axis for `stage.param` (or `params.name`), checking the target exists and
/// every value has the right type.
pub fn grid_axis(
    label: &str,
    values: Value,
    stages: &[Stage],
    shared: &BTreeMap<String, Value>,
) -> Result<GridAxis, (String, Option<String>)> {
    let (target, param) = label.split_once('.').ok_or_else(|| {
        (
            format!("`{label}` must be stage.param or params.name"),
            None,
        )
    })?;
    let values = match values {
        Value::List(v) if !v.is_empty() => v,
        Value::List(_) => return Err((format!("`{label}` has no values"), None)),
        other => vec![other],
    };
    let ty = if target == "params" {
        let old = shared.get(param).ok_or_else(|| {
            (
                format!("no shared param `{param}`"),
                Some(format!(
                    "shared params: {}",
                    shared.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            )
        })?;
        type_of_value(old)
    } else {
        let stage = stages.iter().find(|s| s.name == target).ok_or_else(|| {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            (
                format!("no stage `{target}`"),
                Some(format!("stages: {}", names.join(", "))),
            )
        })?;
        let spec = stage
            .kind
            .params()
            .iter()
            .find(|p| p.name == param)
            .ok_or_else(|| {
                let names: Vec<&str> = stage.kind.params().iter().map(|p| p.name).collect();
                (
                    format!(
                        "stage `{target}` (kind `{}`) has no param `{param}`",
                        stage.kind.name()
                    ),
                    Some(format!("params: {}", names.join(", "))),
                )
            })?;
        spec.ty.clone()
    };
    for v in &values {
        ty.coerce(v.clone())
            .map_err(|e| (format!("`{label}` value {v}: {e}"), None))?;
    }
    Ok(GridAxis {
        target: target.to_string(),
        param: param.to_string(),
        values,
    })
}

/// Replaces `${params.NAME}`. A string that is exactly one reference takes the referenced
/// value with its type; references inside longer strings are spliced in as text. Other
/// `${...}` forms (such as `${inputs.x}` for shell commands) are left for the stage.
fn interpolate(
    v: Value,
    shared: &BTreeMap<String, Value>,
) -> Result<Value, (String, Option<String>)> {
    match v {
        Value::Str(s) => {
            if !s.contains("${params.") {
                return Ok(Value::Str(s));
            }
            let lookup = |name: &str| {
                shared.get(name).cloned().ok_or_else(|| {
                    let known: Vec<&str> = shared.keys().map(String::as_str).collect();
                    let best = known
                        .iter()
                        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
                        .min()
                        .filter(|(d, _)| *d <= 2)
                        .map(|(_, k)| format!("did you mean `params.{k}`?"));
                    (
                        format!("undefined reference `${{params.{name}}}`"),
                        best.or(Some(if known.is_empty() {
                            "there is no [params] table".to_string()
                        } else {
                            format!("defined in [params]: {}", known.join(", "))
                        })),
                    )
                })
            };
            if let Some(name) = s
                .strip_prefix("${params.")
                .and_then(|r| r.strip_suffix('}'))
                && !name.contains('}')
            {
                return lookup(name);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${params.") {
                out.push_str(&rest[..i]);
                let after = &rest[i + "${params.".len()..];
                let end = after.find('}').ok_or_else(|| {
                    (
                        "unterminated `${params.` reference".to_string(),
                        Some("write ${params.NAME}".to_string()),
                    )
                })?;
                match lookup(&after[..end])? {
                    Value::Str(t) => out.push_str(&t),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Ok(Value::Str(out))
        }
        Value::List(items) => items
            .into_iter()
            .map(|i| interpolate(i, shared))
            .collect::<Result<_, _>>()
            .map(Value::List),
        Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| Ok((k, interpolate(v, shared)?)))
            .collect::<Result<_, _>>()
            .map(Value::Table),
        other => Ok(other),
    }
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

/// The type a shared `[params]` value has, so overrides keep it.
fn type_of_value(v: &Value) -> ParamType {
    match v {
        Value::Bool(_) => ParamType::Bool,
        Value::Int(_) => ParamType::Int,
        Value::Float(_) => ParamType::Float,
        Value::Str(_) => ParamType::Str,
        Value::List(items) => ParamType::List(Box::new(match items.first().map(type_of_value) {
            Some(t @ (ParamType::Bool | ParamType::Int | ParamType::Float)) => t,
            _ => ParamType::Str,
        })),
        Value::Table(_) => ParamType::Table,
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
