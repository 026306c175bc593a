//! `dbfork db list`: the registry, with whether each database still exists.
//! Reading only: no collection runs first, and rows that name what dbfork
//! would not make are shown as FOREIGN and left alone.

use anyhow::Result;
use dbfork_engine::names::{self, PREFIX};
use dbfork_engine::ops;
use dbfork_engine::process;
use dbfork_engine::Backend;

use crate::cli::ListArgs;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &ListArgs) -> Result<()> {
    let backend = &opened.backend;
    let entries = backend.registry_list().await?;
    let existing = backend.databases(PREFIX).await?;
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["exists"] = existing.contains(&e.name).into();
                v
            })
            .collect();
        dbfork_meta::out!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if entries.is_empty() {
        dbfork_meta::say!("dbfork: the registry on {} is empty", backend.url());
        return Ok(());
    }
    let now = process::now();
    dbfork_meta::out!(
        "{:<36} {:<8} {:<8} {:<12} {:<18} {:>6}",
        "NAME",
        "KIND",
        "STATE",
        "FINGERPRINT",
        "OWNER",
        "AGE"
    );
    for e in &entries {
        let state = if !names::is_dbfork_shape(&e.name) {
            "FOREIGN"
        } else if existing.contains(&e.name) {
            e.state.as_str()
        } else {
            "missing"
        };
        let owner = if e.owner_pid == 0 {
            "-".to_string()
        } else {
            format!("{}@{}", e.owner_pid, e.host)
        };
        dbfork_meta::out!(
            "{:<36} {:<8} {:<8} {:<12} {:<18} {:>5}s",
            e.name,
            e.kind.as_str(),
            state,
            &e.fingerprint[..e.fingerprint.len().min(12)],
            owner,
            now - e.created_at
        );
    }
    if let Some(warning) = ops::foreign_rows_warning(&entries) {
        dbfork_meta::say!("dbfork: warning: {warning}");
    }
    Ok(())
}
