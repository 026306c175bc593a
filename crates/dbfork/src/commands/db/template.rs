//! `dbfork db template`: build or reuse a fingerprinted template.

use anyhow::Result;
use dbfork_engine::cache::TemplateCache;
use dbfork_engine::fingerprint::Recipe;
use dbfork_engine::ops::{self, Cancel, TemplateOptions};
use dbfork_engine::Backend;

use crate::cli::TemplateArgs;
use crate::errors::UsageError;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(
    opened: &Opened,
    args: &TemplateArgs,
    settings: &Settings,
    cancel: &Cancel,
) -> Result<()> {
    let backend = &opened.backend;
    let Some(setup) = settings.text("setup")? else {
        return Err(UsageError("`db template` needs the command that migrates the template: give --setup / DBFORK_SETUP, or `setup` in the project's configuration file (dbfork.toml or [tool.dbfork] of pyproject.toml)".into()).into());
    };
    let (dir, inputs) = settings.recipe_inputs(&std::env::current_dir()?)?;
    let recipe = Recipe {
        setup,
        inputs,
        dir,
        ..Recipe::default()
    };
    let cache_size = settings.size("template_cache_size")?;
    let options = TemplateOptions {
        build_timeout: settings.duration_or_default("build_timeout")?,
        lock_wait: settings.duration_or_default("lock_timeout")?,
        echo_setup: !args.quiet,
        drop_deadline: settings.connection()?.drop_timeout,
        log_dir: None,
        cache: settings.path("template_cache")?.map(|dir| {
            TemplateCache::new(
                &dir,
                cache_size.unwrap_or(dbfork_engine::cache::DEFAULT_MAX_BYTES),
            )
        }),
        incremental: settings.switch("incremental")?.unwrap_or(false),
        // Without a project state directory, the cache's files are the
        // ancestors that say what they were built from.
        ancestors: Vec::new(),
    };
    let template = ops::ensure_template(backend, &recipe, &options, cancel).await?;
    let url = backend.url().with_database(&template.name);
    say_built(&template);
    if args.verify {
        let differences =
            ops::verify_template(backend, &recipe, &template, &options, cancel).await?;
        if !differences.is_empty() {
            let shown: Vec<&str> = differences.iter().take(20).map(String::as_str).collect();
            anyhow::bail!(crate::errors::VerifyFailed(format!(
                "the template {} differs from a build of the same setup from nothing ({} line{}):\n{}{}",
                template.name,
                differences.len(),
                if differences.len() == 1 { "" } else { "s" },
                shown.join("\n"),
                if differences.len() > shown.len() { "\n..." } else { "" }
            )));
        }
        dbfork_meta::say!(
            "dbfork: verified: the template {} holds what a build from nothing holds (every object's definition and every table's row count)",
            template.name
        );
    }
    if let Some(file) = &template.exported_to {
        dbfork_meta::say!(
            "dbfork: wrote the template to the cache: {}",
            file.display()
        );
    }
    if opened.server.is_some() {
        dbfork_meta::say!("dbfork: note: this template lives on an ephemeral server and goes with it when this command ends");
    }
    if args.json {
        let mut value = serde_json::to_value(&template)?;
        value["url"] = url.to_url_without_password().into();
        dbfork_meta::out!("{value}");
    } else {
        dbfork_meta::out!("{}", template.fingerprint);
    }
    Ok(())
}

/// Says what became of the template: reused, grown, restored or built.
fn say_built(template: &ops::Template) {
    for warning in &template.warnings {
        dbfork_meta::say!("dbfork: warning: {warning}");
    }
    if template.reused {
        dbfork_meta::say!(
            "dbfork: reusing template {} (inputs unchanged; setup not run)",
            template.name
        );
    } else if let Some(from) = &template.grown_from {
        dbfork_meta::say!(
            "dbfork: built template {} in {:.2}s from {from} (incremental: {} new input file{})",
            template.name,
            template.build_seconds,
            template.added_inputs.len(),
            if template.added_inputs.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    } else if let Some(file) = &template.restored_from {
        dbfork_meta::say!(
            "dbfork: restored template {} from the cache in {:.2}s ({}; setup not run)",
            template.name,
            template.build_seconds,
            file.display()
        );
    } else {
        dbfork_meta::say!(
            "dbfork: built template {} in {:.2}s",
            template.name,
            template.build_seconds
        );
    }
}
