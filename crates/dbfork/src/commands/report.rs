//! `dbfork report merge`: one report of a suite run in shards.

use anyhow::Result;
use dbfork_meta::report::{check_shards, merge as merge_reports, read_json};
use dbfork_runner::report::{write_json, write_junit};

use crate::cli::MergeArgs;
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
