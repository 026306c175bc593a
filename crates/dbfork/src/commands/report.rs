//! `dbfork report merge`: one report of a suite run in shards. `dbfork
//! report show`: a recorded run.

use anyhow::Result;
use dbfork_meta::report::{check_shards, merge as merge_reports, read_json};
use dbfork_runner::report::{write_json, write_junit};

use crate::cli::{HtmlArgs, MergeArgs, ShowArgs};
use crate::errors::UsageError;

pub fn merge(args: MergeArgs) -> Result<i32> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read the report {}: {e}; give the files `dbfork run --json FILE` wrote",
                path.display()
            ))
        })?;
        let report = read_json(&text)
            .map_err(|e| UsageError(format!("cannot read the report {}: {e}", path.display())))?;
        reports.push(report);
    }
    check_shards(&reports)
        .map_err(|why| UsageError(format!("cannot merge these reports: {why}")))?;
    let count = reports.len();
    let merged = merge_reports(reports);
    if let Some(path) = &args.json {
        write_json(&merged, path)?;
    }
    if let Some(path) = &args.junit {
        write_junit(&merged, path)?;
    }
    dbfork_meta::out!(
        "{} ({count} report{} merged)",
        merged.summary_line(),
        if count == 1 { "" } else { "s" }
    );
    Ok(merged.exit_code)
}

/// The recorded run `run` names (an id or a prefix; the latest without
/// it): its name, its folder and its report.
pub fn recorded(
    run: Option<&str>,
) -> Result<(String, std::path::PathBuf, dbfork_meta::report::RunReport)> {
    let runs = runs_dir()?;
    let found = dbfork_runner::recording::recordings(&runs)
        .into_iter()
        .find(|(name, _)| run.is_none_or(|wanted| name.starts_with(wanted)));
    let Some((name, _)) = found else {
        let which = run.map_or("no run".to_string(), |r| format!("no run `{r}`"));
        return Err(UsageError(format!(
            "{which} is recorded in {}; dbfork run records each run there (the newest {} kept)",
            runs.display(),
            dbfork_runner::recording::KEEP_RUNS
        ))
        .into());
    };
    let dir = runs.join(&name);
    let report = report_of(&name, &dir)?;
    Ok((name, dir, report))
}

/// The folder of this project's recorded runs.
fn runs_dir() -> Result<std::path::PathBuf> {
    Ok(crate::settings::state_dir_of(&std::env::current_dir()?)
        .join(dbfork_runner::recording::RUNS_DIR))
}

/// The report of recorded run `name`, in `dir`.
fn report_of(name: &str, dir: &std::path::Path) -> Result<dbfork_meta::report::RunReport> {
    let text = std::fs::read_to_string(dir.join("report.json")).map_err(|e| {
        UsageError(format!(
            "the run {name} has no report in {} ({e}): it did not end (killed?); its events are in events.jsonl",
            dir.display()
        ))
    })?;
    Ok(read_json(&text).map_err(|e| UsageError(format!("cannot read {}: {e}", dir.display())))?)
}

/// A recorded failure: the run, its command, the tests its worker ran before it.
pub struct Failure {
    pub run: String,
    pub command: Vec<String>,
    pub before: Vec<String>,
}

/// Where `test` failed last: in the recorded run `run` (an id or a prefix),
/// else the newest recorded run where it failed; `None` when none did.
pub fn before_failure(run: Option<&str>, test: &str) -> Result<Option<Failure>> {
    let runs = runs_dir()?;
    if let Some(wanted) = run {
        let (name, dir, report) = recorded(Some(wanted))?;
        return match failure_in(&name, &dir, &report, test) {
            Some(found) => Ok(Some(found)),
            None => Err(UsageError(format!("{test} did not fail in run {name}")).into()),
        };
    }
    for (name, _) in dbfork_runner::recording::recordings(&runs) {
        let dir = runs.join(&name);
        let report = report_of(&name, &dir).ok();
        if let Some(found) = report.and_then(|r| failure_in(&name, &dir, &r, test)) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn failure_in(
    name: &str,
    dir: &std::path::Path,
    report: &dbfork_meta::report::RunReport,
    test: &str,
) -> Option<Failure> {
    let failed = report
        .tests
        .iter()
        .find(|t| t.id == test && t.outcome.is_failure())?;
    let order = dbfork_runner::recording::read_order(dir);
    let ran = order.get(&failed.slot?)?;
    let at = ran.iter().position(|t| t == test)?;
    Some(Failure {
        run: name.to_string(),
        command: report.command.clone(),
        before: ran[..at].to_vec(),
    })
}

/// How many of the tests a worker ran before a failure `report show` names.
const AFTER: usize = 5;

/// The recorded run `args.run` names (the latest without it): how many
/// tests each worker ran (`--full`: which, in order), each failed test with
/// the tests its worker ran just before it, and the summary as it ended.
pub fn show(args: ShowArgs) -> Result<i32> {
    let (name, dir, report) = recorded(args.run.as_deref())?;
    dbfork_meta::out!("run {name}: {}", report.command.join(" "));
    dbfork_meta::out!("recorded in {}", dir.display());
    let order = dbfork_runner::recording::read_order(&dir);
    for (slot, tests) in &order {
        dbfork_meta::out!("worker gw{slot}, {} test(s)", tests.len());
        if args.full {
            for test in tests {
                dbfork_meta::out!("  {test}");
            }
        }
    }
    for test in report.tests.iter().filter(|t| t.outcome.is_failure()) {
        let ran = test
            .slot
            .and_then(|slot| order.get(&slot).map(|tests| (slot, tests)));
        let Some((slot, tests)) = ran else {
            continue;
        };
        let at = tests.iter().position(|t| *t == test.id).unwrap_or(0);
        let before = &tests[at.saturating_sub(AFTER)..at];
        let earlier = at - before.len();
        let after = match (before.is_empty(), earlier) {
            (true, _) => "first in its worker".to_string(),
            (false, 0) => format!("after {}", before.join(", ")),
            (false, n) => format!(
                "after {} (and {n} earlier: --full lists them)",
                before.join(", ")
            ),
        };
        dbfork_meta::out!(
            "{} {} [gw{slot}], test {} of its worker, {after}",
            test.outcome.as_str().to_uppercase(),
            test.id,
            at + 1
        );
    }
    dbfork_runner::progress::print_final(&report);
    Ok(0)
}

/// `dbfork report html [RUN] [-o FILE]`: the recorded run as one page.
pub fn html(args: HtmlArgs) -> Result<i32> {
    let (name, dir, report) = recorded(args.run.as_deref())?;
    let events: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let path = args
        .output
        .unwrap_or_else(|| std::path::PathBuf::from(format!("dbfork-run-{name}.html")));
    let page = dbfork_runner::html::page(&report, &events);
    dbfork_runner::report::write_atomic(&path, page.as_bytes())
        .map_err(|e| UsageError(format!("cannot write the page {}: {e}", path.display())))?;
    dbfork_meta::out!(
        "{}: run {name}, {} tests, {}",
        path.display(),
        report.tests.len(),
        report.summary_line()
    );
    Ok(0)
}
