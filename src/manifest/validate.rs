//! Checks across stages: every reference names an existing output, and no cycles.

use super::*;

impl Loader<'_> {
    pub(super) fn check_references(&mut self, stages: &[Stage]) {
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

    pub(super) fn check_cycles(&mut self, stages: &[Stage]) {
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
}
