//! One recording per run: `.dbfork/runs/<run-id>/` keeps the run's event
//! stream (`events.jsonl`: one JSON object per line, `t` seconds from the
//! start: notes, the collection, workers' states, every test with its
//! outcome, output and worker), each worker's order (`order.json`: per slot,
//! the tests in the order it ran them) and the run's report
//! (`report.json`, as `--json` writes it). `dbfork report show` reads it; the
//! classification and bisection of failures start from it. The newest
//! `--keep-runs` recordings stay ([`KEEP_RUNS`]), none over [`MAX_AGE_DAYS`] days old;
//! a recording stops growing past [`MAX_BYTES`]. A failure to record never
//! fails the run: it says so once and records no more.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::sinks::{RunEvent, Sink};
use dbfork_meta::report::TryKind;

/// The folder of the recordings, in the state directory.
pub const RUNS_DIR: &str = "runs";
/// The recordings kept by default (the newest; `--keep-runs`).
pub const KEEP_RUNS: usize = 20;
/// Recordings older than this are removed.
pub const MAX_AGE_DAYS: u64 = 14;
/// The most bytes one recording's event stream takes.
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;

pub struct Recording {
    dir: PathBuf,
    events: Option<BufWriter<File>>,
    written: u64,
    started: Instant,
    /// Per slot: the tests in the order its worker finished them.
    order: BTreeMap<usize, Vec<String>>,
}

impl Recording {
    /// A new recording of run `run_id` (which started at `started`: the
    /// events' times count from then) in `state_dir/runs/`, the older
    /// ones but `keep - 1` pruned first; `None` when `keep` is 0, or (said)
    /// when it cannot be made.
    pub fn start(
        state_dir: &Path,
        run_id: &str,
        keep: usize,
        started: Instant,
    ) -> Option<Recording> {
        if keep == 0 {
            return None;
        }
        let runs = state_dir.join(RUNS_DIR);
        let made = (|| {
            private_dir(&runs)?;
            prune(&runs, keep - 1);
            let dir = runs.join(run_id);
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            let file = dbfork_engine::files::create_new_private(&dir.join("events.jsonl"))?;
            Ok::<_, std::io::Error>((dir, file))
        })();
        match made {
            Ok((dir, file)) => Some(Recording {
                dir,
                events: Some(BufWriter::new(file)),
                written: 0,
                started,
                order: BTreeMap::new(),
            }),
            Err(e) => {
                dbfork_meta::say!(
                    "dbfork: warning: this run is not recorded ({}: {e})",
                    runs.display()
                );
                None
            }
        }
    }

    fn line(&mut self, mut value: serde_json::Value) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        value["t"] = json!((self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
        let mut text = value.to_string();
        text.push('\n');
        self.written += text.len() as u64;
        let written = if self.written > MAX_BYTES {
            Err(std::io::Error::other(format!(
                "the recording is over {} MiB",
                MAX_BYTES / 1024 / 1024
            )))
        } else {
            events.write_all(text.as_bytes())
        };
        if let Err(e) = written {
            dbfork_meta::say!(
                "dbfork: warning: the recording in {} stops here: {e}",
                self.dir.display()
            );
            self.events = None;
        }
    }

    fn finish(&mut self, report: &dbfork_meta::report::RunReport) {
        if let Some(mut events) = self.events.take() {
            let _ = events.flush();
        }
        let order = serde_json::to_vec_pretty(&self.order).unwrap_or_default();
        let wrote = dbfork_engine::files::write_replacing(&self.dir.join("order.json"), &order)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::report::write_json(report, &self.dir.join("report.json"))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = wrote {
            dbfork_meta::say!(
                "dbfork: warning: the recording in {} is incomplete: {e}",
                self.dir.display()
            );
        }
    }
}

/// An event as the recording's line says it (without its time).
pub fn event_json(event: &RunEvent) -> Option<serde_json::Value> {
    Some(match event {
        RunEvent::Note(message) => json!({"event": "note", "message": message}),
        RunEvent::Collected(total) => json!({"event": "collected", "tests": total}),
        RunEvent::Worker { slot, status } => {
            json!({"event": "worker", "slot": slot, "status": status})
        }
        RunEvent::TestFinished(record) => json!({"event": "test", "test": record}),
        RunEvent::Tried { record, kind } => json!({"event": "try", "kind": kind, "test": record}),
        RunEvent::Database {
            what,
            name,
            seconds,
        } => json!({"event": "database", "what": what, "name": name, "seconds": seconds}),
        RunEvent::Ending => json!({"event": "ending"}),
        RunEvent::Finished { report, .. } => json!({
            "event": "finished",
            "exit_code": report.exit_code,
            "summary": report.summary_line(),
        }),
    })
}

impl Sink for Recording {
    fn event(&mut self, event: &RunEvent) {
        // Each worker's order: a test that ran more than once took its
        // place at its first try.
        let placed = match event {
            RunEvent::TestFinished(record) => Some(record).filter(|r| r.tries.is_empty()),
            RunEvent::Tried { record, kind } => Some(record).filter(|_| *kind == TryKind::Run),
            _ => None,
        };
        if let Some(record) = placed {
            if let Some(slot) = record.slot {
                self.order.entry(slot).or_default().push(record.id.clone());
            }
        }
        if let Some(line) = event_json(event) {
            self.line(line);
        }
        if let RunEvent::Finished { report, .. } = event {
            self.finish(report);
        }
    }
}

/// A recording's order (`order.json`): each slot's tests in the order its
/// worker ran them; empty when it has none.
pub fn read_order(dir: &Path) -> BTreeMap<usize, Vec<String>> {
    std::fs::read_to_string(dir.join("order.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The recordings in `runs`, newest first: (name, modified).
pub fn recordings(runs: &Path) -> Vec<(String, SystemTime)> {
    let mut found: Vec<(String, SystemTime)> = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), modified))
        })
        .collect();
    found.sort_by_key(|(_, modified)| std::cmp::Reverse(*modified));
    found
}

/// Keeps the newest `keep` recordings that are not too old.
fn prune(runs: &Path, keep: usize) {
    let too_old = SystemTime::now() - Duration::from_secs(MAX_AGE_DAYS * 24 * 3600);
    // Only what this recorder makes: a run id (hex), a real directory.
    let ours = recordings(runs)
        .into_iter()
        .filter(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_hexdigit()));
    for (index, (name, modified)) in ours.enumerate() {
        if index >= keep || modified < too_old {
            let _ = std::fs::remove_dir_all(runs.join(name));
        }
    }
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            if meta.file_type().is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other("it is not a directory"))
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_recordings_stay_and_only_ours_go() {
        let runs = tempfile::tempdir().unwrap();
        for i in 0..25 {
            std::fs::create_dir(runs.path().join(format!("{i:010x}"))).unwrap();
        }
        std::fs::create_dir(runs.path().join("not-a-run")).unwrap();
        prune(runs.path(), 19);
        let left = recordings(runs.path());
        assert_eq!(left.len(), 20, "{left:?}");
        assert!(left.iter().any(|(name, _)| name == "not-a-run"));
    }
}
