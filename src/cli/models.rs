//! Model and kind commands: `kinds`, `inspect-ckpt`, `score`, and `--model` sources.

use super::*;

/// Resolves `--model`: `MANIFEST.toml:STAGE` names a finished model-producing stage;
/// anything else is a model directory or a checkpoint file (see [`crate::predict::source`]).
pub(super) fn model_source(
    spec: &str,
    sets: &[Override],
    preset: Option<&str>,
    store_flag: Option<&Path>,
) -> Result<crate::predict::Source> {
    let Some((manifest, stage)) = spec.rsplit_once(':').filter(|(m, _)| m.ends_with(".toml"))
    else {
        if !sets.is_empty() {
            return Err(usage(
                "--set applies to a --model MANIFEST.toml:STAGE, not to a model directory or file",
            ));
        }
        return crate::predict::source(spec, preset);
    };
    let (rec, store) = finished_record(Path::new(manifest), sets, stage, store_flag)?;
    let dir = rec
        .outputs
        .get(crate::artifacts::model_dir::OUTPUT)
        .map(|o| store.object_path(&o.hash))
        .with_context(|| {
            format!("stage `{stage}` has no output `model`: is it a model-producing stage?")
        })?;
    crate::predict::source(&dir.to_string_lossy(), preset)
}

pub(super) fn kinds(name: Option<&str>, markdown: bool) -> Result<i32> {
    let list: Vec<_> = match name {
        None => stages::kinds().iter().collect(),
        Some(n) => vec![stages::kinds().find(n).ok_or_else(|| {
            let names: Vec<&str> = stages::kinds().names().collect();
            usage(format!("no stage kind `{n}`; kinds: {}", names.join(", ")))
        })?],
    };
    for k in list {
        if markdown {
            println!(
                "### `{}` (version {})\n\n{}\n",
                k.name(),
                k.version(),
                k.doc()
            );
        } else {
            println!("{} (version {})\n  {}\n", k.name(), k.version(), k.doc());
        }
        let mut t = new_table(vec!["param", "type", "default", "meaning"]);
        if markdown {
            t.load_style(comfy_table::presets::ASCII_MARKDOWN);
        }
        for p in k.params() {
            let default = match &p.default {
                ParamDefault::Required => "required".to_string(),
                ParamDefault::Absent => "unset".to_string(),
                ParamDefault::Value(v) => show_default(v),
            };
            // Markdown cells cannot hold a bare `|`.
            let cell = |s: String| if markdown { s.replace('|', "\\|") } else { s };
            t.add_row(vec![
                p.name.to_string(),
                cell(p.ty.to_string()),
                cell(default),
                cell(p.doc.to_string()),
            ]);
        }
        println!("{t}");
        let bullet = if markdown { "\n- " } else { "\n" };
        match k.inputs() {
            InputsSpec::Any => print!("{bullet}inputs: any names"),
            InputsSpec::Named(specs) => {
                for s in specs {
                    print!(
                        "{bullet}input `{}`{}: {}",
                        s.name,
                        if s.required { "" } else { " (optional)" },
                        s.doc
                    );
                }
            }
        }
        let outputs = k.outputs(&manifest::Params::default());
        if !outputs.is_empty() {
            print!(
                "{bullet}outputs: {}",
                outputs
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("\n");
    }
    Ok(0)
}

/// A default as a manifest would write it; floats in the shorter of decimal and
/// exponent form (`1e-4`, `6.9e6`, `0.999`).
pub(super) fn show_default(v: &manifest::value::Value) -> String {
    match v {
        manifest::value::Value::Float(x) => {
            let (plain, exp) = (format!("{x:?}"), format!("{x:e}"));
            if exp.len() < plain.len() { exp } else { plain }
        }
        other => other.to_string(),
    }
}

pub(super) fn inspect_ckpt(a: &InspectCkptArgs) -> Result<i32> {
    use crate::ckpt::{self, Format};
    let format = match a.format {
        CkptFormat::Auto => None,
        CkptFormat::Tf => Some(Format::TfBundle),
        CkptFormat::Pytorch => Some(Format::PyTorch),
        CkptFormat::Safetensors => Some(Format::Safetensors),
    };
    let ins = ckpt::inspect(&a.path, format)?;
    let mut t = new_table(vec!["name", "dtype", "shape", "numel", "note"]);
    let mut rows: Vec<(&str, Vec<String>)> = ins
        .rows
        .iter()
        .map(|r| {
            let cells = vec![
                r.name.clone(),
                r.dtype.to_string(),
                format!("{:?}", r.shape),
                r.numel.to_string(),
                String::new(),
            ];
            (r.name.as_str(), cells)
        })
        .collect();
    rows.extend(ins.unreadable.iter().map(|u| {
        let cells = vec![
            u.name.clone(),
            u.dtype.clone(),
            format!("{:?}", u.shape),
            u.shape.iter().product::<usize>().to_string(),
            format!("cannot be loaded: {}", u.why),
        ];
        (u.name.as_str(), cells)
    }));
    // One list in the checkpoint's name order, loadable or not.
    rows.sort_by(|a, b| a.0.cmp(b.0));
    for (_, cells) in rows {
        t.add_row(cells);
    }
    println!("{t}");
    let unreadable = match ins.unreadable.len() {
        0 => String::new(),
        n => format!(" ({n} cannot be loaded)"),
    };
    println!(
        "{}: {} tensors{unreadable}, {} parameters (floating-point elements), {} bytes{}",
        ins.format,
        ins.rows.len() + ins.unreadable.len(),
        ins.params(),
        ins.bytes(),
        match ins.bytes() {
            0..1024 => String::new(),
            b => format!(" ({})", human_bytes(b as u64)),
        }
    );
    Ok(0)
}

pub(super) fn score(a: ScoreArgs) -> Result<i32> {
    use crate::score::{counter, metric};
    // The quant_info names the model and resolution it was written for.
    let (info_model, info_res) = match &a.quant_info {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", p.display()))?;
            (
                v["model"].as_str().map(String::from),
                v["resolution"].as_u64().map(|r| r as usize),
            )
        }
        None => (None, None),
    };
    let name = a
        .model
        .or(info_model)
        .unwrap_or_else(|| "efficientnet-b0".to_string());
    let Some(config) = crate::model::EfficientNetConfig::preset(&name) else {
        bail!(
            "unknown model `{name}`; presets: {}",
            crate::model::config::PRESETS.join(", ")
        );
    };
    let resolution = a.resolution.or(info_res).unwrap_or(config.resolution);
    let mut q = match &a.quant_info {
        Some(p) => counter::Quantization::float().read_quant_info(p)?,
        None => {
            counter::Quantization::uniform(a.weight_bits.unwrap_or(32), a.act_bits.unwrap_or(32))
        }
    };
    if let Some(b) = a.bias_bits {
        q.bias_bits = b;
    }
    let options = counter::Options {
        freebie: !a.no_freebie,
        notebook_skip_slip: a.notebook_skip_slip,
        params_baseline: a.params_baseline,
        ops_baseline: a.ops_baseline,
    };
    let report = counter::count(&config, resolution, &q, &options)?;
    let mcfg = metric::MetricConfig {
        params_baseline: a.params_baseline,
        ops_baseline: a.ops_baseline,
        ..Default::default()
    };
    let paper = metric::paper_metric(&config, resolution, &q, &mcfg);
    if a.json {
        let v = serde_json::json!({
            "model": name,
            "resolution": resolution,
            "official": report,
            "paper_metric": paper,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{name} at {resolution}×{resolution}");
        print!("{}", counter::render_table(&report));
        println!(
            "paper metric (the original's training metric: additions at low precision, no \
             pooling/SE-scale/skip ops): {:.5}  (params {:.0}, ops {:.0})",
            paper.metric, paper.params, paper.ops
        );
    }
    Ok(0)
}
