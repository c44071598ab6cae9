//! The stage DAG of a manifest: order, selection and rendering.

use crate::manifest::{InputRef, Manifest};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeSet;
use std::fmt::Write;

pub struct Dag<'m> {
    pub manifest: &'m Manifest,
    graph: DiGraph<usize, ()>,
}

impl<'m> Dag<'m> {
    /// Builds the graph (the manifest loader has already rejected cycles and dangling
    /// references).
    pub fn new(manifest: &'m Manifest) -> Self {
        let mut graph = DiGraph::new();
        for i in 0..manifest.stages.len() {
            graph.add_node(i);
        }
        for (i, s) in manifest.stages.iter().enumerate() {
            let ups: BTreeSet<&str> = s.upstream().collect();
            for up in ups {
                let j = manifest
                    .stages
                    .iter()
                    .position(|u| u.name == up)
                    .expect("manifest validated references");
                graph.add_edge(NodeIndex::new(j), NodeIndex::new(i), ());
            }
        }
        Dag { manifest, graph }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.manifest.stages.iter().position(|s| s.name == name)
    }

    /// Topological order; among stages that could go next, file order wins, so the order
    /// is stable and reads like the manifest.
    pub fn order(&self) -> Vec<usize> {
        let n = self.graph.node_count();
        let mut indegree: Vec<usize> = (0..n)
            .map(|i| {
                self.graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|i| indegree[*i] == 0).collect();
        let mut out = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            out.push(i);
            for m in self
                .graph
                .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.insert(m.index());
                }
            }
        }
        out
    }

    /// Stage indices of `targets` and everything upstream of them, in topological order.
    /// An empty selection means every stage.
    pub fn select(&self, targets: &[String]) -> Result<Vec<usize>, String> {
        if targets.is_empty() {
            return Ok(self.order());
        }
        let mut keep = BTreeSet::new();
        let mut stack = Vec::new();
        for t in targets {
            let i = self.index(t).ok_or_else(|| {
                let names: Vec<&str> = self.manifest.stage_names().collect();
                format!(
                    "no stage `{t}` in {}; stages: {}",
                    self.manifest.path.display(),
                    names.join(", ")
                )
            })?;
            stack.push(i);
        }
        while let Some(i) = stack.pop() {
            if keep.insert(i) {
                stack.extend(
                    self.graph
                        .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                        .map(|n| n.index()),
                );
            }
        }
        Ok(self
            .order()
            .into_iter()
            .filter(|i| keep.contains(i))
            .collect())
    }

    /// Plain text: one line per stage in order, with what it reads.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for i in self.order() {
            let s = &self.manifest.stages[i];
            let _ = write!(out, "{} ({})", s.name, s.kind.name());
            let mut reads: Vec<String> = Vec::new();
            for (name, input) in &s.inputs {
                reads.push(match input {
                    InputRef::Stage { stage, output } => format!("{name} <- {stage}:{output}"),
                    InputRef::Path(p) => format!("{name} <- {}", self.display_path(p)),
                });
            }
            if !reads.is_empty() {
                let _ = write!(out, "\n    {}", reads.join("\n    "));
            }
            out.push('\n');
        }
        out
    }

    fn display_path(&self, p: &std::path::Path) -> String {
        p.strip_prefix(&self.manifest.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// Graphviz dot.
    pub fn dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", self.manifest.name);
        for i in self.order() {
            let s = &self.manifest.stages[i];
            let _ = writeln!(
                out,
                "  \"{}\" [shape=box, label=\"{}\\n({})\"];",
                s.name,
                s.name,
                s.kind.name()
            );
            for (name, input) in &s.inputs {
                match input {
                    InputRef::Stage { stage, output } => {
                        let _ = writeln!(
                            out,
                            "  \"{stage}\" -> \"{}\" [label=\"{output} → {name}\"];",
                            s.name
                        );
                    }
                    InputRef::Path(p) => {
                        let p = self.display_path(p);
                        let _ = writeln!(
                            out,
                            "  \"{p}\" [shape=note];\n  \"{p}\" -> \"{}\" [label=\"{name}\"];",
                            s.name
                        );
                    }
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart (renders in GitHub markdown).
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        let id = |name: &str| name.replace('-', "_");
        for i in self.order() {
            let s = &self.manifest.stages[i];
            let _ = writeln!(
                out,
                "  {}[\"{}<br/><i>{}</i>\"]",
                id(&s.name),
                s.name,
                s.kind.name()
            );
            for (name, input) in &s.inputs {
                match input {
                    InputRef::Stage { stage, output } => {
                        let _ = writeln!(
                            out,
                            "  {} -- \"{output} → {name}\" --> {}",
                            id(stage),
                            id(&s.name)
                        );
                    }
                    InputRef::Path(p) => {
                        let p = self.display_path(p);
                        let pid = format!(
                            "file_{}",
                            blake3::hash(p.as_bytes()).to_hex().get(..8).unwrap_or("")
                        );
                        let _ = writeln!(out, "  {pid}[/\"{p}\"/] -- {name} --> {}", id(&s.name));
                    }
                }
            }
        }
        out
    }
}
