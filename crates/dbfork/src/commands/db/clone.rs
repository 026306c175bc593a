//! `dbfork db clone`: N clones of a template at once.

use std::time::Instant;

use anyhow::Result;
use dbfork_engine::ops::{self, Cancel, CloneOptions};
use dbfork_engine::process::Owner;
use dbfork_engine::{Backend, CloneMethod};

use crate::cli::CloneArgs;
use crate::errors::UsageError;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(
    opened: &Opened,
    args: &CloneArgs,
    settings: &Settings,
    cancel: &Cancel,
) -> Result<()> {
    let backend = &opened.backend;
    let Some(template) = settings.text("template")? else {
        return Err(UsageError("`db clone` needs the template to clone: give --template / DBFORK_TEMPLATE (the fingerprint `dbfork db template` printed, or 6 or more of its first characters)".into()).into());
    };
    let method = settings.text("clone_method")?.unwrap_or_default();
    let method = CloneMethod::parse(backend.kind(), &method)?;
    let owner = parse_owner(&settings.text("owner")?.unwrap_or_default())?;
    if args.count == 0 {
        return Err(UsageError("-n must be at least 1".into()).into());
    }
    let template = ops::find_template(backend, &template).await?;
    let options = CloneOptions {
        method,
        concurrency: settings.count_or_default("clone_concurrency")?,
        drop_deadline: settings.connection()?.drop_timeout,
    };
    let started = Instant::now();
    let clones = ops::make_clones(backend, &template, args.count, &owner, &options, cancel).await?;
    let seconds = started.elapsed().as_secs_f64();
    dbfork_meta::say!(
        "dbfork: made {} clone{} of {} in {seconds:.3}s ({method:?})",
        clones.len(),
        if clones.len() == 1 { "" } else { "s" },
        template.name
    );
    if backend.url().password.is_some() {
        dbfork_meta::say!("dbfork: the URLs leave the password out; give it through PGPASSWORD / MYSQL_PWD or a password file");
    }
    if args.json {
        let list: Vec<_> = clones
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "url": c.url.to_url_without_password()}))
            .collect();
        let value = serde_json::json!({"template": template.name, "method": format!("{method:?}"), "seconds": seconds, "clones": list});
        dbfork_meta::out!("{value}");
    } else {
        for c in &clones {
            dbfork_meta::out!("{}", c.url.to_url_without_password());
        }
    }
    Ok(())
}

fn parse_owner(text: &str) -> Result<Owner> {
    match text {
        "parent" => {
            let (owner, wrappers) = Owner::lasting_parent();
            if !wrappers.is_empty() {
                dbfork_meta::say!(
                    "dbfork: the clones belong to process {}, not to {}, which exit{} with this command; they are garbage once {} exits (--owner PID or none to choose otherwise)",
                    owner.pid,
                    wrappers.join(" and "),
                    if wrappers.len() == 1 { "s" } else { "" },
                    owner.pid
                );
            }
            Ok(owner)
        }
        "none" => Ok(Owner::nobody()),
        pid => match pid.parse::<u32>() {
            Ok(pid) if dbfork_engine::process::is_alive(pid, 0) => Ok(Owner::of_pid(pid)),
            Ok(pid) => Err(UsageError(format!("--owner {pid}: no such process runs here")).into()),
            Err(_) => Err(UsageError(format!(
                "--owner `{text}`: expected `parent`, `none` or a process id"
            ))
            .into()),
        },
    }
}
