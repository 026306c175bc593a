//! `dbfork db list`: the registry, with whether each database still exists.
//! Reading only: no collection runs first, and rows that name what dbfork
//! would not make are shown as FOREIGN and left alone.

use anyhow::Result;
use dbfork_engine::names::{self, PREFIX};
use dbfork_engine::ops;
use dbfork_engine::process;
use dbfork_engine::Backend;

use crate::cli::ListArgs;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &ListArgs, settings: &Settings) -> Result<()> {
    let backend = &opened.backend;
    let entries = backend.registry_list().await?;
    let existing = backend.databases(PREFIX).await?;
    let served = served(settings.text("serve_url")?).await;
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["exists"] = existing.contains(&e.name).into();
                if let Some(state) = served.get(&e.name) {
                    v["served"] = state.clone().into();
                }
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
        } else if !existing.contains(&e.name) {
            "missing"
        } else if let Some(state) = served.get(&e.name) {
            state.as_str()
        } else {
            e.state.as_str()
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

/// The states of the clones of the service at `url` (`--serve-url`), by
/// name; none (with a warning) when it does not answer.
async fn served(url: Option<String>) -> std::collections::BTreeMap<String, String> {
    let Some(url) = url else {
        return Default::default();
    };
    let asked = tokio::task::spawn_blocking(move || {
        dbfork_client::Client::new(&url)?.with_env_token().states()
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|asked| asked.map_err(|e| e.to_string()));
    asked.unwrap_or_else(|e| {
        dbfork_meta::say!(
            "dbfork: warning: the clones' states from dbfork serve are not shown: {e}"
        );
        Default::default()
    })
}
