//! `ehrprep report`: a markdown summary of a catalog's training and evaluation runs with PNG
//! plots: pretraining loss curves, and each task's metric against the training fraction
//! beside the paper's published points.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::catalog::sql::{EVAL, REPORT, TRAIN};
use crate::eval::plot::{Chart, PALETTE, Series};
use crate::eval::task_data::Task;
use crate::{Error, Result};

/// The files written.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: PathBuf,
    pub plots: Vec<PathBuf>,
}

fn query<T>(
    conn: &duckdb::Connection,
    sql: &str,
    f: impl FnMut(&duckdb::Row<'_>) -> duckdb::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn
        .prepare(sql)
        .map_err(Error::catalog("preparing a report query"))?;
    stmt.query_map([], f)
        .and_then(|rows| rows.collect())
        .map_err(Error::catalog("reading the report's data"))
}

/// Writes `out/report.md` and its plots from the catalog at `db`.
pub fn write(db: &Path, out: &Path) -> Result<Report> {
    let conn = crate::catalog::open(db)?;
    // A catalog without training or evaluation yet still gets a (short) report.
    for schema in [TRAIN.get("schema"), EVAL.get("schema")] {
        conn.execute_batch(schema)
            .map_err(Error::catalog("creating the report's tables"))?;
    }
    conn.execute_batch(EVAL.get("paper_results"))
        .map_err(Error::catalog("loading the paper's results"))?;
    crate::fsutil::create_private_dir(out)?;
    crate::catalog::restrict_to_owner(out)?;
    let mut md = String::from("# ehrprep report\n\n");
    let _ = writeln!(md, "Catalog: `{}`\n", db.display());
    let mut plots = Vec::new();

    md.push_str("## Pretraining\n\n");
    let runs = query(&conn, REPORT.get("train_summary"), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<f64>>(5)?,
            r.get::<_, Option<f64>>(6)?,
        ))
    })?;
    if runs.is_empty() {
        md.push_str("No pretraining runs.\n\n");
    } else {
        md.push_str(
            "| run | model | device | status | steps | last loss | median tokens/s | color |\n",
        );
        md.push_str("| --- | --- | --- | --- | ---: | ---: | ---: | --- |\n");
        let curves = query(&conn, REPORT.get("loss_curves"), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(2)?,
                r.get::<_, f64>(3)?,
            ))
        })?;
        let mut by_run: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for (run, step, loss) in &curves {
            by_run.entry(run).or_default().push((*step as f64, *loss));
        }
        let mut series = Vec::new();
        for (i, (run, model, device, status, steps, loss, rate)) in runs.iter().enumerate() {
            let (name, color) = PALETTE[i % PALETTE.len()];
            let _ = writeln!(
                md,
                "| {run} | {model} | {device} | {status} | {steps} | {} | {} | {name} |",
                loss.map(|l| format!("{l:.4}"))
                    .unwrap_or_else(|| "-".into()),
                rate.map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "-".into()),
            );
            if let Some(points) = by_run.get(run.as_str()) {
                series.push(Series {
                    points: points.clone(),
                    color,
                    markers: false,
                });
            }
        }
        let path = out.join("pretrain_loss.png");
        Chart {
            width: 640,
            height: 360,
            series,
            log_x: false,
            y_range: None,
        }
        .write_png(&path)?;
        md.push_str("\n![training loss by step](pretrain_loss.png)\n\nTraining loss (y) by step (x), one line per run in the color of its row.\n\n");
        plots.push(path);
    }

    md.push_str("## Finetuning (test set, mean over seeds)\n\n");
    let rows = query(&conn, REPORT.get("eval_summary"), |r| {
        Ok(MetricRow {
            key: MetricKey::read(r)?,
            mean: r.get(4)?,
            sd: r.get(5)?,
            seeds: r.get(6)?,
            majority: r.get(7)?,
        })
    })?;
    let paper: Vec<(MetricKey, f64, String)> = query(&conn, REPORT.get("paper"), |r| {
        Ok((MetricKey::read(r)?, r.get(4)?, r.get(5)?))
    })?;
    if rows.is_empty() {
        md.push_str("No finished finetuning runs.\n");
    }
    for task in [Task::Mednli, Task::Radqa, Task::Clip] {
        let of_task: Vec<&MetricRow> = rows
            .iter()
            .filter(|r| r.key.task == task.as_str())
            .collect();
        if of_task.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {}\n", task.as_str());
        md.push_str("| model | fraction | metric | mean | sd | seeds | majority |\n| --- | ---: | --- | ---: | ---: | ---: | ---: |\n");
        for r in &of_task {
            let MetricKey {
                model,
                fraction,
                metric,
                ..
            } = &r.key;
            let majority = r.majority.map_or("-".to_string(), |m| format!("{m:.4}"));
            let _ = writeln!(
                md,
                "| {model} | {fraction} | {metric} | {:.4} | {:.4} | {} | {majority} |",
                r.mean, r.sd, r.seeds
            );
        }
        let metric = task.selection_metric();
        let mut legend = Vec::new();
        let mut series = Vec::new();
        let mut models: Vec<&str> = of_task.iter().map(|r| r.key.model.as_str()).collect();
        models.sort();
        models.dedup();
        for (i, model) in models.iter().enumerate() {
            let (name, color) = PALETTE[i % PALETTE.len()];
            let points = of_task
                .iter()
                .filter(|r| r.key.model == *model && r.key.metric == metric)
                .map(|r| (r.key.fraction, r.mean))
                .collect();
            series.push(Series {
                points,
                color,
                markers: false,
            });
            legend.push(format!("{name}: {model}"));
        }
        // The paper's results as its Fig. 4 draws them: a curve per limited-data model, the
        // in-context models flat across the fractions, Table 3's base models as points.
        let mut drawn: BTreeMap<(&str, &str), Vec<(f64, f64)>> = BTreeMap::new();
        for (key, value, kind) in paper
            .iter()
            .filter(|(key, _, _)| key.task == task.as_str() && key.metric == metric)
        {
            drawn
                .entry((kind.as_str(), key.model.as_str()))
                .or_default()
                .push((key.fraction, *value));
        }
        for (j, ((kind, model), points)) in drawn.into_iter().enumerate() {
            let (name, color) = PALETTE[(models.len() + j) % PALETTE.len()];
            let (points, markers, what) = match kind {
                "flat" => (
                    PAPER_FRACTIONS.iter().map(|&f| (f, points[0].1)).collect(),
                    false,
                    "flat line",
                ),
                "point" => (points, true, "square"),
                _ => (points, false, "line"),
            };
            series.push(Series {
                points,
                color,
                markers,
            });
            legend.push(format!("{name} {what}: paper, {model}"));
        }
        let file = format!("{}_{metric}.png", task.as_str());
        let path = out.join(&file);
        Chart {
            width: 640,
            height: 360,
            series,
            log_x: true,
            y_range: Some((0.0, 1.0)),
        }
        .write_png(&path)?;
        let _ = writeln!(
            md,
            "\n![{metric} by training fraction]({file})\n\n{metric} (y) by training fraction (x, log scale). {}.\n",
            legend.join("; ")
        );
        plots.push(path);
    }
    let markdown = out.join("report.md");
    crate::fsutil::write_atomic(&markdown, md.as_bytes())?;
    Ok(Report { markdown, plots })
}

/// The training fractions of the paper's limited-data experiments.
const PAPER_FRACTIONS: [f64; 5] = [0.01, 0.05, 0.1, 0.25, 1.0];

/// Which result a row is about: the first four columns of `eval_summary` and `paper`.
struct MetricKey {
    model: String,
    task: String,
    fraction: f64,
    metric: String,
}

impl MetricKey {
    fn read(r: &duckdb::Row) -> duckdb::Result<MetricKey> {
        Ok(MetricKey {
            model: r.get(0)?,
            task: r.get(1)?,
            fraction: r.get(2)?,
            metric: r.get(3)?,
        })
    }
}

/// One `eval_summary` row: our mean over seeds.
struct MetricRow {
    key: MetricKey,
    mean: f64,
    sd: f64,
    seeds: i64,
    /// Chance: the most frequent training target's score, where the runs recorded it.
    majority: Option<f64>,
}
