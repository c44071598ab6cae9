//! `report`: plots and a page that tie a pipeline's results together — the float and
//! quantized evaluations side by side, per-layer bit-widths (the original's two figures)
//! and their histogram, the training curves of every adjq/SWA stage as one timeline, and
//! the checkpoint selections. Writes report.md, a self-contained report.html, the charts
//! as PNG and SVG, and summary.txt (what `runner run` prints at the end).

use crate::artifacts::{Artifact, ArtifactKind, EvalResult, MiniEpoch, Selection};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::quant::info::QuantInfo;
use crate::report::page::Page;
use crate::report::plots::{self, Bars, GroupedBars, Line, Panel, Panels};
use anyhow::{Context, Result, bail};
use std::path::Path;

pub struct Report;

pub const OUTPUT: &str = "report";
pub const SUMMARY: &str = "summary.txt";
pub const HTML: &str = "report.html";

crate::stage_params! {
    /// Params of `report`.
    pub struct ReportParams {
        /// the page's title
        pub title: String = "Adjustable Quantization report",
        /// names of the metrics.jsonl inputs in the order their stages ran (one timeline); others follow by name
        pub curves: Vec<String> = Vec::<String>::new(),
    }
}

/// An input as its artifact, told by the name it was produced under.
fn read_input(ctx: &StageContext, name: &str, path: &Path) -> Result<Artifact> {
    let produced = ctx.input_file_name(name).unwrap_or_default();
    let Some(kind) = ArtifactKind::of(produced) else {
        bail!(
            "input `{name}` ({}) is not something a report shows; give eval.json or \
             quant_info.json (eval), metrics.jsonl (adjq) or selection.json (select) outputs",
            ctx.sources.get(name).map_or("?", String::as_str)
        );
    };
    Artifact::read(kind, path).with_context(|| format!("input `{name}`"))
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

impl KindSchema for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    fn version(&self) -> u32 {
        1
    }

    fn doc(&self) -> &'static str {
        "Charts and a page for a pipeline's results. Inputs take any names and are told \
         apart by their content: eval.json (a column of the results table; name \
         the float one `float` and the final one `final`), quant_info.json (per-layer \
         average weight and activation bits as bar charts, and a bit-width histogram), \
         metrics.jsonl of adjq stages (training curves on one timeline) and selection.json \
         (why a checkpoint was chosen). Writes `report/` with report.md, a self-contained \
         report.html, every chart as PNG and SVG, and summary.txt, which `runner run` \
         prints when the pipeline ends."
    }

    fn params(&self) -> &'static [ParamSpec] {
        ReportParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Any
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![OUTPUT.into()]
    }
}

impl StageKind for Report {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let out = ctx.output_path(OUTPUT);
        std::fs::create_dir_all(&out)?;
        let (mut evals, mut bits, mut curves, mut selections) = (vec![], vec![], vec![], vec![]);
        for (name, path) in &ctx.inputs {
            match read_input(ctx, name, path)? {
                Artifact::Eval(e) => evals.push((name.clone(), e)),
                Artifact::QuantInfo(b) => bits.push((name.clone(), b)),
                Artifact::Curve(c) => curves.push((name.clone(), c)),
                Artifact::Selection(s) => selections.push((name.clone(), s)),
            }
        }
        if evals.is_empty() && bits.is_empty() && curves.is_empty() {
            bail!("nothing to report: give the report stage eval, quant_info or metrics inputs");
        }
        // Timeline order: the `curves` param first, then the rest by name.
        let p: ReportParams = ctx.params()?;
        let order = p.curves;
        for n in &order {
            if !curves.iter().any(|(c, _)| c == n) {
                bail!(
                    "param `curves` names `{n}`, which is not a metrics.jsonl input of this stage"
                );
            }
        }
        let rank = |n: &str| order.iter().position(|o| o == n).unwrap_or(order.len());
        curves.sort_by_key(|(n, _)| rank(n));
        // Float evaluations first, so the table reads float → quantized.
        evals.sort_by_key(|(_, e)| e.quantized);

        let title = p.title;
        let mut page = Page::new(&title);
        let summary = summary(&evals);
        if !summary.is_empty() {
            page.paragraph(&summary.replace('\n', "  \n"));
        }
        if !evals.is_empty() {
            results_section(&mut page, &evals);
        }
        for (name, info) in &bits {
            bits_section(&mut page, &out, name, info)?;
        }
        if !curves.is_empty() {
            curves_section(&mut page, &out, &curves)?;
        }
        if !selections.is_empty() {
            selections_section(&mut page, &selections);
        }
        crate::atomic::write(&out.join("report.md"), page.markdown().as_bytes())?;
        crate::atomic::write(&out.join(HTML), page.html(&title, &out)?.as_bytes())?;
        crate::atomic::write(&out.join(SUMMARY), summary.as_bytes())?;
        if let Some((_, e)) = final_eval(&evals) {
            ctx.set_metric("top1", e.top1);
            ctx.set_metric("avg_weight_bits", e.avg_weight_bits);
            ctx.set_metric("avg_act_bits", e.avg_act_bits);
            ctx.set_metric("paper_metric", e.paper_metric.metric);
            ctx.set_metric("official_score", e.official.score);
        }
        Ok(())
    }
}

/// The input named `name`, else the first one `fallback` accepts.
fn pick<'a>(
    evals: &'a [(String, EvalResult)],
    name: &str,
    fallback: impl Fn(&EvalResult) -> bool,
) -> Option<&'a (String, EvalResult)> {
    evals
        .iter()
        .find(|(n, _)| n == name)
        .or_else(|| evals.iter().find(|(_, e)| fallback(e)))
}

fn final_eval(evals: &[(String, EvalResult)]) -> Option<&(String, EvalResult)> {
    pick(evals, "final", |e| e.quantized).or_else(|| evals.last())
}

/// A few lines comparing the float and the final model (or describing the one given).
fn summary(evals: &[(String, EvalResult)]) -> String {
    let Some((fname, fin)) = final_eval(evals) else {
        return String::new();
    };
    let float = pick(evals, "float", |e| !e.quantized).filter(|(n, _)| n != fname);
    let mut s = String::new();
    match float {
        Some((_, f)) => s.push_str(&format!(
            "top-1: float {} → final {} ({:+.2} points) on {} validation images\n",
            pct(f.top1),
            pct(fin.top1),
            100.0 * (fin.top1 - f.top1),
            fin.images
        )),
        None => s.push_str(&format!(
            "top-1: {} ({fname}) on {} validation images\n",
            pct(fin.top1),
            fin.images
        )),
    }
    s.push_str(&format!(
        "average bits: weights {:.2}, activations {:.2}\n",
        fin.avg_weight_bits, fin.avg_act_bits
    ));
    match float {
        Some((_, f)) => s.push_str(&format!(
            "paper metric {:.4} → {:.4}; official MicroNet score {:.4} → {:.4}\n",
            f.paper_metric.metric, fin.paper_metric.metric, f.official.score, fin.official.score
        )),
        None => s.push_str(&format!(
            "paper metric {:.4}; official MicroNet score {:.4}\n",
            fin.paper_metric.metric, fin.official.score
        )),
    }
    s
}

fn results_section(page: &mut Page, evals: &[(String, EvalResult)]) {
    page.heading("Results");
    let mut header = vec![String::new()];
    header.extend(evals.iter().map(|(n, _)| n.clone()));
    let row = |label: &str, f: &dyn Fn(&EvalResult) -> String| {
        let mut r = vec![label.to_string()];
        r.extend(evals.iter().map(|(_, e)| f(e)));
        r
    };
    let rows = vec![
        row("model", &|e| {
            format!(
                "{} ({})",
                e.model,
                if e.quantized { "quantized" } else { "float" }
            )
        }),
        row("top-1", &|e| pct(e.top1)),
        row("top-5", &|e| pct(e.top5)),
        row("validation images", &|e| e.images.to_string()),
        row("average weight bits", &|e| {
            format!("{:.2}", e.avg_weight_bits)
        }),
        row("average activation bits", &|e| {
            format!("{:.2}", e.avg_act_bits)
        }),
        row("paper metric", &|e| format!("{:.4}", e.paper_metric.metric)),
        row("official MicroNet score", &|e| {
            format!("{:.4}", e.official.score)
        }),
        row("  parameters (32-bit equivalents)", &|e| {
            format!("{:.0}", e.official.params_cost)
        }),
        row("  multiplies (32-bit equivalents)", &|e| {
            format!("{:.0}", e.official.mults_cost)
        }),
        row("  additions (32-bit equivalents)", &|e| {
            format!("{:.0}", e.official.adds_cost)
        }),
    ];
    page.table(&header, &rows);
    page.paragraph(
        "The paper metric is the original's training metric (params/P0 + ops/O0 from the \
         bit-widths); the official score counts every op by the MicroNet rules (see \
         score.txt of each eval stage for the per-layer table).",
    );
}

/// Channel counts per bit-width: bins 2..=8 and "16+" (unquantized or high precision).
fn histogram(channels: impl Iterator<Item = f32>) -> Vec<f64> {
    let mut bins = [0.0; 8];
    for b in channels {
        let b = b.round() as i64;
        let i = if b > 8 {
            7
        } else {
            (b.clamp(2, 8) - 2) as usize
        };
        bins[i] += 1.0;
    }
    let total: f64 = bins.iter().sum();
    bins.iter().map(|c| c / total.max(1.0)).collect()
}

fn bits_section(page: &mut Page, out: &Path, name: &str, info: &QuantInfo) -> Result<()> {
    page.heading(&format!("Per-layer bit-widths ({name})"));
    let layers: Vec<String> = info.layers.iter().map(|l| l.name.clone()).collect();
    let weights: Vec<f64> = info.layers.iter().map(|l| l.avg_weight_bits).collect();
    let acts: Vec<f64> = info.layers.iter().map(|l| l.avg_act_bits).collect();
    for (kind, values, mean, color) in [
        ("weight", weights, info.avg_weight_bits, plots::color(0)),
        ("activation", acts, info.avg_act_bits, plots::color(1)),
    ] {
        let stem = format!("{name}_{kind}_bits");
        plots::save(
            &Bars {
                title: format!("{name}: average {kind} bits per layer"),
                value_label: format!("mean {kind} bits over the layer's channels"),
                categories: layers.clone(),
                values,
                color,
                reference: Some((format!("network average {mean:.2}"), mean)),
            },
            &out.join(&stem),
        )?;
        page.image(
            &format!("average {kind} bits per layer"),
            &format!("{stem}.png"),
        );
    }
    let stem = format!("{name}_bit_histogram");
    plots::save(
        &GroupedBars {
            title: format!("{name}: channels by bit-width"),
            x_label: "bits".into(),
            y_label: "share of channels".into(),
            bins: (2..=8)
                .map(|b| b.to_string())
                .chain(["16+".into()])
                .collect(),
            series: vec![
                (
                    "weight channels".into(),
                    histogram(
                        info.layers
                            .iter()
                            .flat_map(|l| l.weight_bits.iter().copied()),
                    ),
                ),
                (
                    "activation channels".into(),
                    histogram(info.layers.iter().flat_map(|l| l.act_bits.iter().copied())),
                ),
            ],
        },
        &out.join(&stem),
    )?;
    page.image("channels by bit-width", &format!("{stem}.png"));
    page.paragraph(&format!(
        "Averages over the network (weights weighted by weight count, activations by \
         element count): weights **{:.2}** bits, activations **{:.2}** bits; biases {} \
         bits, swish inputs (in models with swish) {} bits.",
        info.avg_weight_bits, info.avg_act_bits, info.bias_bits, info.swish_bits
    ));
    let rows: Vec<Vec<String>> = info
        .layers
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.weight_bits.len().to_string(),
                format!("{:.2}", l.avg_weight_bits),
                l.act_bits.len().to_string(),
                format!("{:.2}", l.avg_act_bits),
            ]
        })
        .collect();
    page.table(
        &[
            "layer",
            "weight channels",
            "avg weight bits",
            "input channels",
            "avg activation bits",
        ]
        .map(String::from),
        &rows,
    );
    Ok(())
}

fn curves_section(page: &mut Page, out: &Path, curves: &[(String, Vec<MiniEpoch>)]) -> Result<()> {
    page.heading("Training curves");
    type Pick = fn(&MiniEpoch) -> f64;
    let series: [(&str, &str, Pick); 5] = [
        ("total loss (mini-epoch mean)", "loss", |r| {
            r.loss.total as f64
        }),
        ("cross-entropy", "loss", |r| r.loss.cross_entropy as f64),
        ("distillation", "loss", |r| r.loss.distill as f64),
        ("paper metric", "metric", |r| r.metric),
        ("validation top-1", "top-1", |r| r.accuracy.top1),
    ];
    // One timeline: each stage's mini-epochs follow the previous stage's.
    let mut offsets = Vec::new();
    let mut at = 0.0;
    for (name, rows) in curves {
        offsets.push((at, name.clone()));
        at += rows.len() as f64;
    }
    let points = |rows: &[MiniEpoch], start: f64, f: Pick| -> Vec<(f64, f64)> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| (start + i as f64 + 1.0, f(r)))
            .collect()
    };
    let mut panels: Vec<Panel> = series
        .iter()
        .enumerate()
        .map(|(p, (title, y, f))| Panel {
            title: title.to_string(),
            y_label: y.to_string(),
            lines: curves
                .iter()
                .zip(&offsets)
                .enumerate()
                .map(|(i, ((name, rows), (start, _)))| Line {
                    // The first panel's legend names the stages for all panels.
                    name: if p == 0 { name.clone() } else { String::new() },
                    color: plots::color(i),
                    points: points(rows, *start, *f),
                    markers: rows.len() < 40,
                })
                .collect(),
        })
        .collect();
    let mut bit_lines = Vec::new();
    for (i, ((_, rows), (start, _))) in curves.iter().zip(&offsets).enumerate() {
        for (f, markers) in [
            ((|r: &MiniEpoch| r.avg_weight_bits) as Pick, false),
            (|r: &MiniEpoch| r.avg_act_bits, true),
        ] {
            bit_lines.push(Line {
                name: String::new(),
                color: plots::color(i),
                points: points(rows, *start, f),
                markers,
            });
        }
    }
    panels.push(Panel {
        title: "average bits (plain: weights, dots: activations)".into(),
        y_label: "bits".into(),
        lines: bit_lines,
    });
    plots::save(
        &Panels {
            title: "adjq training, one point per mini-epoch (1/10 epoch)".into(),
            x_label: "mini-epoch".into(),
            columns: 3,
            panels,
            separators: offsets,
        },
        &out.join("training_curves"),
    )?;
    page.image("training curves", "training_curves.png");
    let rows: Vec<Vec<String>> = curves
        .iter()
        .map(|(name, rows)| {
            let (first, last) = (rows.first(), rows.last());
            let span = |f: Pick| match (first, last) {
                (Some(a), Some(b)) => format!("{:.4} → {:.4}", f(a), f(b)),
                _ => "-".into(),
            };
            vec![
                name.clone(),
                rows.len().to_string(),
                span(|r| r.metric),
                span(|r| 100.0 * r.accuracy.top1),
                span(|r| r.avg_weight_bits),
                span(|r| r.avg_act_bits),
            ]
        })
        .collect();
    page.table(
        &[
            "stage",
            "mini-epochs",
            "paper metric",
            "top-1 %",
            "avg weight bits",
            "avg activation bits",
        ]
        .map(String::from),
        &rows,
    );
    Ok(())
}

fn selections_section(page: &mut Page, selections: &[(String, Selection)]) {
    page.heading("Checkpoint selections");
    let rows: Vec<Vec<String>> = selections
        .iter()
        .map(|(name, s)| {
            let rule = match s.rule.as_str() {
                "highest_top1" => format!("highest top-1 with metric ≤ {:.4}", s.max_metric),
                _ => format!("lowest metric with top-1 ≥ {:.4}", s.min_top1),
            };
            vec![
                name.clone(),
                rule,
                s.chosen.clone(),
                format!("{:.4}", s.metric),
                pct(s.top1),
                format!("{} of {}", s.eligible, s.candidates.len()),
            ]
        })
        .collect();
    page.table(
        &["select", "rule", "chosen", "metric", "top-1", "eligible"].map(String::from),
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_round_and_share() {
        let h = histogram([2.0, 2.2, 3.0, 8.0, 16.0, 32.0, 7.6, 1.0].into_iter());
        assert_eq!(h.len(), 8);
        // 1 → bin 2; 2.2 → 2; 7.6 → 8; 16 and 32 → "16+".
        assert_eq!(h[0], 3.0 / 8.0);
        assert_eq!(h[1], 1.0 / 8.0);
        assert_eq!(h[6], 2.0 / 8.0);
        assert_eq!(h[7], 2.0 / 8.0);
        assert!((h.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}

#[cfg(test)]
mod params_tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::ReportParams>();
    }
}
