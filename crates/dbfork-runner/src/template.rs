//! The run's template: built by the user's `--setup`, or, for a Django
//! project without one, by the controller with the project's own test
//! database setup; reused while its fingerprint stays the same. Each build
//! says what changed since the last one (the manifest of the last build of
//! the same setup is kept in `.dbfork/templates/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dbfork_engine::cache::TemplateCache;
use dbfork_engine::fingerprint::{Manifest, Recipe};
use dbfork_engine::ops::{self, Cancel, Template, TemplateOptions};
use dbfork_engine::{AnyBackend, Backend};
use dbfork_protocol::{BuildTarget, DjangoReport};

use crate::controller::{Configured, Controller};
use crate::error::RunError;
use crate::progress::Notes;
use crate::{django, RunConfig};

/// Builds or reuses the run's template and says which.
pub async fn prepare(
    config: &RunConfig,
    backend: &Arc<AnyBackend>,
    configured: &Configured,
    controller: Option<&mut Controller>,
    cancel: &Cancel,
    progress: &Notes,
) -> Result<Template, RunError> {
    if let Some(report) = &configured.django {
        django::check_backend(report, backend.kind())?;
    }
    let logs = config.state_dir.join("logs");
    let recipe = recipe_of(config, configured);
    let zero_config = config.setup.is_none() && configured.django.is_some();
    let options = TemplateOptions {
        build_timeout: config.build_timeout,
        lock_wait: config.lock_timeout,
        echo_setup: config.verbose > 0 || !config.live,
        drop_deadline: config.drop_timeout,
        log_dir: Some(logs.clone()),
        cache: config
            .template_cache
            .as_ref()
            .map(|dir| TemplateCache::new(dir, config.template_cache_size)),
        // Django's setup (migrate with keepdb) applies only what is missing,
        // so growing a template is safe there; a --setup command must say so.
        incremental: config.incremental.unwrap_or(zero_config),
        ancestors: load_history(&manifest_path(&config.state_dir, &recipe.setup_key())),
    };
    let template = match (&config.setup, &configured.django, controller) {
        (None, Some(report), Some(controller)) => {
            announce_django(report, &recipe, progress)?;
            let deadline = config.build_timeout;
            let build = |name: String| async move {
                let target = BuildTarget {
                    url: backend.url().with_database(&name).to_url_with_password(),
                    name: ops::database_reference(backend, &name),
                };
                progress.note(
                    "building the template: the project's migrations run in the test process",
                );
                controller
                    .build(target, &name, deadline, cancel, &logs)
                    .await
            };
            ops::ensure_template_with(backend, &recipe, &options, cancel, build).await?
        }
        _ => {
            if let (Some(setup), Some(report)) = (&config.setup, &configured.django) {
                if let Some(why) =
                    django::setup_misses_template(setup, report, configured.database_url.as_deref())
                {
                    return Err(RunError::Usage(why));
                }
                progress.note("this is a Django project: --setup is not needed (without it dbfork builds the template with the tests' own database setup)");
            }
            if config.setup.is_some() {
                progress.note(
                    "preparing the template (the setup command runs only when its inputs changed)",
                );
            } else if let Some(note) = &configured.note {
                progress.note(&format!(
                    "no Django project found: {note}. pytest-django is left alone (each worker makes its own test database); give --setup to build a template"
                ));
            }
            ops::ensure_template(backend, &recipe, &options, cancel).await?
        }
    };
    if config.setup.is_some() || configured.django.is_some() {
        report(config, &template, progress);
    }
    if !template.reused {
        prune(config, backend, &template.name, progress).await;
    }
    Ok(template)
}

/// Drops the templates of this setup beyond the `keep_templates` most
/// recently used, and says so; a failure only warns (`db gc` collects later).
async fn prune(config: &RunConfig, backend: &AnyBackend, current: &str, progress: &Notes) {
    let keep = config.keep_templates;
    match ops::prune_templates(backend, current, keep, config.heartbeat_ttl, config.drop_timeout)
        .await
    {
        Ok(dropped) if !dropped.is_empty() => progress.note(&format!(
            "dropped {} older template{} of this setup ({}): the {keep} most recently used are kept (--keep-templates, keep_templates in the configuration; 0 keeps all)",
            dropped.len(),
            if dropped.len() == 1 { "" } else { "s" },
            dropped.join(", ")
        )),
        Ok(_) => {}
        Err(e) => progress.note(&format!(
            "warning: the older templates of this setup were not pruned: {e}"
        )),
    }
}

/// What the run's template is built from: the `--setup` command, or the
/// Django project's own setup the controller reported.
pub fn recipe_of(config: &RunConfig, configured: &Configured) -> Recipe {
    match (&config.setup, &configured.django) {
        (None, Some(report)) => Recipe {
            dir: config.recipe_dir.clone(),
            ..django::recipe(report, &config.inputs)
        },
        _ => Recipe {
            setup: config.setup.clone().unwrap_or_else(|| "true".to_string()),
            inputs: config.inputs.clone(),
            dir: config.recipe_dir.clone(),
            ..Recipe::default()
        },
    }
}

fn announce_django(
    report: &DjangoReport,
    recipe: &Recipe,
    progress: &Notes,
) -> Result<(), RunError> {
    let files = recipe.input_count()?;
    let settings = if report.settings_module.is_empty() {
        "settings configured in code".to_string()
    } else {
        report.settings_module.clone()
    };
    progress.note(&format!(
        "Django project ({settings}): the template is made by the tests' own database setup ({}), configured as the tests are; it is rebuilt when any of its {files} input files or the settings that shape the schema change",
        report
            .facts
            .get("template setup")
            .map(String::as_str)
            .unwrap_or("create_test_db"),
    ));
    Ok(())
}

/// Says whether the template was reused or built, and what changed since
/// the nearest earlier build of the same setup; keeps this build's manifest.
fn report(config: &RunConfig, template: &Template, progress: &Notes) {
    let store = manifest_path(
        &config.state_dir,
        &setup_key(&template.manifest, config.recipe_dir.clone()),
    );
    let mut history = load_history(&store);
    for warning in &template.warnings {
        progress.note(&format!("warning: {warning}"));
    }
    if template.reused {
        progress.note(&format!(
            "reusing template {} (inputs unchanged)",
            template.name
        ));
    } else if let Some(file) = &template.restored_from {
        progress.note(&format!(
            "restored template {} from the cache in {:.1}s ({}); the setup did not run",
            template.name,
            template.build_seconds,
            file.display()
        ));
    } else if let Some(from) = &template.grown_from {
        let added = &template.added_inputs;
        let listed = if added.len() <= 6 {
            added.join(", ")
        } else {
            format!("{} and {} more", added[..5].join(", "), added.len() - 5)
        };
        progress.note(&format!(
            "built template {} in {:.1}s from {from}, the earlier template of this setup (incremental: only input files were added: {listed})",
            template.name, template.build_seconds
        ));
    } else {
        // A build for another test tool (manage.py test after pytest) is
        // not an earlier build of this one: its inputs differ by the tool's
        // own files (pytest.ini, conftest.py), which did not change.
        let pytest = uses_pytest_files(&template.manifest);
        let changes = history
            .iter()
            .filter(|m| m.fingerprint != template.manifest.fingerprint)
            .filter(|m| m.same_server_kind(&template.manifest))
            .filter(|m| uses_pytest_files(m) == pytest)
            .map(|m| template.manifest.changes_since(m))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        let why = match changes.len() {
            0 => String::new(),
            n if n <= 6 => format!("; changed since the last build: {}", changes.join(", ")),
            n => format!(
                "; changed since the last build: {} and {} more",
                changes[..5].join(", "),
                n - 5
            ),
        };
        progress.note(&format!(
            "built template {} in {:.1}s{why}",
            template.name, template.build_seconds
        ));
    }
    if let Some(file) = &template.exported_to {
        progress.note(&format!(
            "wrote the template to the cache in {:.1}s: {} ({})",
            template.export_seconds,
            file.display(),
            human_bytes(std::fs::metadata(file).map(|m| m.len()).unwrap_or(0))
        ));
    }
    if config.verbose >= 2 {
        for (name, value) in template.manifest.facts() {
            // Whole: a fact of several entries (INSTALLED_APPS, models) is one per line.
            let lines: Vec<&str> = value.lines().collect();
            let text = match lines[..] {
                [] => format!("template input: setting {name} = "),
                [one] => format!("template input: setting {name} = {one}"),
                _ => format!(
                    "template input: setting {name} ({} entries):\n    {}",
                    lines.len(),
                    lines.join("\n    ")
                ),
            };
            progress.note(&text);
        }
        for file in template.manifest.files() {
            progress.note(&format!("template input: {file}"));
        }
    }
    history.retain(|m| m.fingerprint != template.manifest.fingerprint);
    history.insert(0, template.manifest.clone());
    history.truncate(KEPT_MANIFESTS);
    if let Ok(text) = serde_json::to_string(&history) {
        if let Some(dir) = store.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = dbfork_engine::files::write_replacing(&store, text.as_bytes());
    }
}

/// Whether a build's inputs include pytest's own files (its ini file or a
/// `conftest.py`): a build for pytest, not for Django's runner.
fn uses_pytest_files(manifest: &Manifest) -> bool {
    manifest.files().any(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        name == "conftest.py" || name == "pytest.ini"
    })
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

/// How many earlier builds of a setup are remembered, to name what changed
/// since the nearest one.
const KEPT_MANIFESTS: usize = 8;

/// The earlier manifests of a setup kept in `store` (none if unreadable).
fn load_history(store: &Path) -> Vec<Manifest> {
    std::fs::read_to_string(store)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The key of the setup a manifest was built by.
fn setup_key(manifest: &Manifest, dir: Option<PathBuf>) -> String {
    let setup = manifest
        .entries
        .get("setup")
        .map(String::as_str)
        .unwrap_or_default();
    Recipe {
        setup: setup.to_string(),
        dir,
        ..Recipe::default()
    }
    .setup_key()
}

/// Where the last manifests of a setup are kept: one file per setup.
fn manifest_path(state_dir: &Path, setup_key: &str) -> PathBuf {
    state_dir
        .join("templates")
        .join(format!("{setup_key}.json"))
}

/// Gives the Django project's other aliases (not mirrors, not the same
/// database as another) clones of their own, as Django's test setup makes a
/// test database for each.
pub fn add_aliases(config: &mut RunConfig, report: Option<&DjangoReport>, progress: &Notes) {
    let Some(report) = report else {
        return;
    };
    let found = django::other_aliases(report, &config.aliases);
    if found.is_empty() {
        return;
    }
    progress.note(&if found.len() == 1 {
        format!(
            "the database alias {} gets a clone of its own in every worker too, as Django makes a test database for it",
            found[0]
        )
    } else {
        format!(
            "the database aliases {} get clones of their own in every worker too, as Django makes a test database for each",
            found.join(", ")
        )
    });
    config.aliases.extend(found);
}
