//! One `[stages.NAME]` table: its kind, typed params (with overrides, defaults and
//! `${params.x}` references), inputs and resources.

use super::*;

impl Loader<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage(
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
        let mut sources = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        let mut resources = BTreeMap::new();
        let mut cluster = ClusterRequest::default();
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
                    resources =
                        self.resources(&format!("stages.{name}.resources"), v, Some(&mut cluster));
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
                    let line = o.line();
                    let source = match &raw {
                        Value::Str(s) => source::referenced_param(s).map(|n| ParamSource::Shared {
                            name: n.to_string(),
                            line,
                            set: None,
                        }),
                        _ => None,
                    }
                    .unwrap_or(ParamSource::Stage { line });
                    let from_file = overrides.iter().all(|ov| ov.key != key);
                    if from_file
                        && let Some(val) = self.typed(&o, &name, spec.name, &spec.ty, raw, shared)
                    {
                        params.insert(key.to_string(), val);
                        sources.insert(key.to_string(), source);
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
                        sources.insert(ov.key.clone(), ov.source());
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
                    let line = o.line();
                    sources.insert(spec.name.to_string(), ParamSource::PipelineDefault { line });
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
                    sources.insert(spec.name.to_string(), ParamSource::KindDefault);
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
            param_sources: sources,
            input_origins: inputs
                .iter()
                .map(|(k, (_, o))| (k.clone(), o.clone()))
                .collect(),
            inputs: inputs.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            resources: all_resources,
            cluster,
            origin,
        })
    }

    /// Interpolates `${params.x}` and checks the result against the declared type.
    pub(super) fn typed(
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

    pub(super) fn inputs(
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
}
