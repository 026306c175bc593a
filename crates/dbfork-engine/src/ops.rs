//! The operations users see, written once over [`Backend`]: build or reuse a
//! template, make clones, drop, and collect garbage. Each writes the registry
//! row before it creates anything and removes it only after the drop, so that
//! whatever happens in between, garbage collection can finish the job.
//!
//! Its parts: `template` (build or reuse), `setup` (the setup command),
//! `export` (the template cache and `--verify`), `clone`, `gc` (drops,
//! heartbeats, garbage collection) and `env` (what a child gets to reach a
//! database); here cancellation and the options and results they share.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::backend::{AnyBackend, Backend, CloneMethod};
use crate::cache::{self, TemplateCache};
use crate::error::{Error, Result};
use crate::fingerprint::{self, Manifest, Recipe};
use crate::names;
use crate::process::{self, Liveness, Owner};
use crate::registry::{Entry, EntryKind, State};
use crate::url::DbUrl;

mod clone;
mod env;
mod export;
mod gc;
mod setup;
mod template;
#[cfg(test)]
mod tests;

pub use clone::*;
pub use env::*;
pub use export::*;
pub use gc::*;
pub use setup::*;
pub use template::*;

/// Tells long operations to stop (Ctrl-C, SIGTERM). Cloned freely.
#[derive(Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The sending side of [`Cancel`].
pub struct Canceller(watch::Sender<bool>);

impl Cancel {
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    /// A token that is never cancelled.
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Cancel(rx)
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// How long the setup command may run.
    pub build_timeout: Duration,
    /// How long to wait for another process building the same template.
    pub lock_wait: Duration,
    /// Copy the setup command's output to stderr as it comes.
    pub echo_setup: bool,
    pub drop_deadline: Duration,
    /// Where the setup command's whole output is kept (`None`: nowhere).
    pub log_dir: Option<std::path::PathBuf>,
    /// Where templates are exported after a build and restored from before one.
    pub cache: Option<TemplateCache>,
    /// Grow the template from its nearest ancestor (see [`Manifest::grows_into`])
    /// instead of building it from nothing.
    pub incremental: bool,
    /// The manifests of earlier builds of this setup: what the templates on
    /// the server were built from (the cache's files say it themselves).
    pub ancestors: Vec<Manifest>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            build_timeout: Duration::from_secs(30 * 60),
            lock_wait: Duration::from_secs(30 * 60),
            echo_setup: true,
            drop_deadline: Duration::from_secs(30),
            log_dir: None,
            cache: None,
            incremental: false,
            ancestors: Vec::new(),
        }
    }
}

/// A ready template.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Template {
    pub fingerprint: String,
    pub name: String,
    /// Whether an existing template was reused (the setup command did not run).
    pub reused: bool,
    /// Seconds spent building it (0 when reused).
    pub build_seconds: f64,
    /// What its fingerprint covers.
    #[serde(skip)]
    pub manifest: Manifest,
    /// The template cache file it was restored from (the setup did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<std::path::PathBuf>,
    /// The cache file it was exported to after this build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_to: Option<std::path::PathBuf>,
    /// Seconds the export took.
    #[serde(skip)]
    pub export_seconds: f64,
    /// What the caller should pass on: a damaged cache file ignored, an export that failed.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The template (or cache file) this one grew from, the setup then run on
    /// its copy; `None` for a build from nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grown_from: Option<String>,
    /// The input files added since that ancestor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_inputs: Vec<String>,
}
