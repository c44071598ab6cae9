//! The `[pipeline]` table: name, root, store, defaults and resource limits.

use super::*;

impl Loader<'_> {
    pub(super) fn pipeline(&mut self, (key, v): Entry<'_, '_>) -> PipelineHead {
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
                        .extend(self.resources("pipeline.resources", v, None));
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

    /// A `resources` table's slot counts. A stage's (`cluster` given) may also hold its
    /// cluster request (`cpus`, `mem`, `time`); the pipeline's limits may not.
    pub(super) fn resources(
        &mut self,
        what: &str,
        v: &Spanned<DeValue<'_>>,
        mut cluster: Option<&mut ClusterRequest>,
    ) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Some(t) = self.table(what, v) else {
            return out;
        };
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if CLUSTER_KEYS.contains(&key) {
                let item = format!("{what}.{key}");
                match cluster.as_deref_mut() {
                    Some(request) => self.cluster_entry(request, &item, key, v),
                    None => {
                        let o = self.at(&k.span());
                        self.err(
                            &o,
                            format!("`{item}` is a cluster request, not a slot limit"),
                        )
                        .hint = Some(format!(
                            "set it per stage (resources = {{ {key} = ... }}); cluster defaults go in [executor.slurm]"
                        ));
                    }
                }
                continue;
            }
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
}
