//! The run history commands: `runs`, `diff`, and `tensorboard` (where the curves are).

use super::*;
use crate::history::RunPoint;
use crate::history::diff::{Selector, diff as compare, side};
use crate::history::table::{Filter, Query, select};

/// The manifest a history command was pointed at, if any (loaded for its store and name).
fn manifest_of(path: Option<&Path>) -> Result<Option<Manifest>> {
    path.map(|p| manifest::load(p, &[], stages::kinds()).map_err(Into::into))
        .transpose()
}

pub(super) fn runs(a: RunsArgs, store_flag: Option<&Path>) -> Result<i32> {
    let m = manifest_of(a.manifest.as_deref())?;
    let store = store_for(m.as_ref(), store_flag)?;
    let logs = store.run_logs();
    let points = RunPoint::all(&logs);
    let query = Query {
        pipeline: a.pipeline.or_else(|| m.as_ref().map(|m| m.name.clone())),
        stage: a.stage,
        filters: a
            .filters
            .iter()
            .map(|f| Filter::parse(f).map_err(|e| usage(format!("--where {e}"))))
            .collect::<Result<_>>()?,
        metrics: a.metric,
        sort: a.sort,
        reverse: a.reverse,
        limit: a.limit,
    };
    let table = select(&points, &query);
    match a.format {
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&table.json())?),
        TableFormat::Csv => {
            use std::io::Write;
            std::io::stdout().write_all(&table.csv()?)?;
        }
        TableFormat::Md => print!("{}", table.markdown()),
        TableFormat::Table => {
            let header = table.header();
            let mut t = new_table(header.iter().map(String::as_str).collect());
            for r in table.text_rows() {
                t.add_row(r);
            }
            println!("{t}");
            let shown = table.rows.len();
            let more = if table.omitted > 0 {
                format!(" ({} more: -n 0 lists all)", table.omitted)
            } else {
                String::new()
            };
            println!(
                "{shown} of {} runs in {}{more}",
                shown + table.omitted,
                store.root.display()
            );
        }
    }
    Ok(0)
}

pub(super) fn diff(a: DiffArgs, store_flag: Option<&Path>) -> Result<i32> {
    let m = manifest_of(a.manifest.as_deref())?;
    let store = store_for(m.as_ref(), store_flag)?;
    let logs = store.run_logs();
    let records = |prefix: &str| store.records_with_prefix(prefix);
    let pick = |text: &str| -> Result<crate::history::diff::Side> {
        let sel = Selector::parse(text).map_err(usage)?;
        side(&sel, &logs, &records).map_err(usage)
    };
    let (x, y) = (pick(&a.a)?, pick(&a.b)?);
    if x.single_stage() != y.single_stage() {
        return Err(usage(format!(
            "`{}` and `{}`: compare a run with a run, or a stage with a stage (3:eval, or a record key)",
            a.a, a.b
        )));
    }
    let d = compare(&x, &y);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{d}");
    }
    Ok(0)
}

pub(super) fn tensorboard(a: TensorboardArgs, store_flag: Option<&Path>) -> Result<i32> {
    let m = manifest_of(a.manifest.as_deref())?;
    let store = store_for(m.as_ref(), store_flag)?;
    let dir = match &m {
        Some(m) => store.tensorboard_dir().join(&m.name),
        None => store.tensorboard_dir(),
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "no TensorBoard curves yet in {}: training stages (pretrain, adjq) write them when they run",
            dir.display()
        )));
    }
    println!("{}", dir.display());
    eprintln!("view them with: tensorboard --logdir {}", dir.display());
    Ok(0)
}
