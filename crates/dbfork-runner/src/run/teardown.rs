//! The end of a run: every worker stopped, every clone dropped (and how the
//! server was found doing it), the final records and report.

use super::*;
use dbfork_meta::report::BisectVerdict;

/// How a run's teardown found the server.
pub(super) enum Teardown {
    Clean,
    /// It does not answer any more: why.
    ServerGone(String),
    /// These clones of the workers were gone before the teardown dropped them.
    Vanished(Vec<String>),
}

impl Executor {
    pub(super) async fn finish(mut self) -> RunReport {
        self.kill_all();
        self.emit(RunEvent::Ending);
        self.stop_controller();
        let dropping = Instant::now();
        let teardown = self.drop_clones().await;
        self.emit(RunEvent::Database {
            what: "teardown",
            name: "",
            seconds: dropping.elapsed().as_secs_f64(),
        });
        let tests = self.final_records();
        let (mut ending, timings) = self.machine.end();
        for slot in &mut ending.slots {
            slot.database = self.database_of(&slot.database);
        }
        // A flaky test (passed on a retry) fails the run when asked to.
        let failed = (tests.iter()).any(|t: &TestRecord| {
            t.outcome.is_failure() || self.config.flaky_fails && t.is_flaky()
        });
        let not_run = tests.iter().any(|t| t.outcome == Outcome::NotRun);
        // A shard of a suite that has tests may be left none by the split:
        // nothing to do is fine there.
        let suite_has_tests = ending.shard.as_ref().is_some_and(|s| s.collected > 0);
        let mut exit_code = decide::run_exit_code(
            ending.fatal,
            ending.interrupted,
            failed || not_run || !ending.collect_errors.is_empty(),
            tests.is_empty() && !suite_has_tests,
        );
        // A bisection runs no tests of its own: it succeeds when it found
        // what makes its test fail.
        if let Some(bisect) = self.bisect.as_ref().filter(|_| exit_code == exit::NO_TESTS) {
            exit_code = match bisect.verdict {
                BisectVerdict::Found => exit::OK,
                BisectVerdict::Stopped => exit::INTERRUPTED,
                _ => exit::TESTS_FAILED,
            };
        }
        // The tests' outcomes are then not (only) their own.
        let database_error = match teardown {
            Teardown::Clean => None,
            Teardown::ServerGone(cause) => Some(format!(
                "the database server went away during the run ({cause}); failures after that are its doing, not the tests'. Clones that could not be dropped are removed by the next dbfork command once the server is back."
            )),
            Teardown::Vanished(names) => Some(format!(
                "{} vanished during the run: something other than this run dropped {} (a `dbfork db gc` or `dbfork clean` from another host or container, or a person). Tests that ran on {} after that failed for that reason, not their own.",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" },
                if names.len() == 1 { "it" } else { "them" },
            )),
        };
        if let Some(why) = database_error {
            dbfork_meta::say!("dbfork: error: {why}");
            if exit_code == exit::TESTS_FAILED || exit_code == exit::OK {
                exit_code = exit::SETUP_OR_DATABASE;
            }
        }
        if let Some(why) = self.why_not_run(&ending, &tests) {
            dbfork_meta::say!("dbfork: {why}");
        }
        let report = RunReport {
            command: self.config.command.clone(),
            run_id: self.run_id.clone(),
            duration: self.started.elapsed().as_secs_f64(),
            started_at: self.started_at,
            exit_code,
            interrupted: ending.interrupted,
            slots: ending.slots,
            tests,
            collect_errors: ending.collect_errors,
            collect_skipped: ending.collect_skipped,
            shard: ending.shard,
            bisect: self.bisect.take(),
        };
        // The files, the timings and the summary, while the controller may
        // still be ending. The timings the schedule was made from, with this
        // run's added.
        let timed = self.protocol() && ending.fatal.is_none();
        self.sinks.push(Box::new(TimingsFile {
            timings,
            state_dir: self.config.state_dir.clone(),
        }));
        self.emit(RunEvent::Finished {
            report: &report,
            timed,
        });
        if let Some(stop) = self.controller_stop.take() {
            let _ = stop.await;
        }
        // Every process has ended, and saved its coverage.
        if let Some(python) = self.python.as_deref().filter(|_| self.config.cov) {
            match crate::coverage::combine(python) {
                Ok(note) => self.progress.note(&note),
                Err(why) => dbfork_meta::say!("dbfork: warning: {why}"),
            }
        }
        report
    }

    /// Why tests were not run when workers were lost for good (the restarts
    /// used up): otherwise the summary's "not run" would be all the user sees.
    pub(super) fn why_not_run(&self, ending: &Ending, tests: &[TestRecord]) -> Option<String> {
        if !ending.out_of_restarts || ending.interrupted || ending.fatal.is_some() {
            return None;
        }
        let max = self.config.max_worker_restarts;
        let restarts = format!(
            "the {max} worker restart{} (--max-worker-restarts) {} used up",
            if max == 1 { "" } else { "s" },
            if max == 1 { "is" } else { "are" }
        );
        let lost = if ending.lost_all {
            "every worker was lost"
        } else {
            "a worker was lost with tests it held, no other was left to run them"
        };
        let n = tests
            .iter()
            .filter(|t| t.outcome == Outcome::NotRun)
            .count();
        if n == 0 {
            return ending.lost_all.then(|| format!("{lost} and {restarts}"));
        }
        Some(format!(
            "{n} test{} did not run (reported as not run): {lost}, and {restarts}. Fix what crashed (the crashed test's report shows the worker's last output), or allow more restarts",
            if n == 1 { "" } else { "s" }
        ))
    }

    /// Teardown: every clone of this run, then anything else this process
    /// registered. Says whether the server went away during the run, or a
    /// worker's clone was dropped under it by someone else.
    pub(super) async fn drop_clones(&mut self) -> Teardown {
        let mut names = self.machine.databases();
        names.append(&mut self.not_dropped);
        if let Some(leasing) = &self.leasing {
            // Leased ones go back to the service, which recreates them.
            names.retain(|name| !leasing.leased(name));
            let keep = self
                .config
                .keep_ready
                .unwrap_or(self.config.jobs.max(1) * (1 + self.config.aliases.len()));
            leasing.end(keep).await;
        }
        let backend = self.backend.clone();
        let ours = format!("{}{}_", names::PREFIX, self.run_id);
        let mut vanished: Vec<String> = match backend.databases(&ours).await {
            Ok(existing) => names
                .iter()
                .filter(|n| !existing.contains(n))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        vanished.splice(0..0, std::mem::take(&mut self.vanished));
        let deadline = self.config.drop_timeout;
        let failures: Vec<String> = stream::iter(names)
            .map(|name| {
                let backend = backend.clone();
                async move {
                    ops::drop_entry(&backend, &name, deadline)
                        .await
                        .err()
                        .map(|e| format!("{name}: {e}"))
                }
            })
            .buffer_unordered(8)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        if let Err(e) = ops::drop_run_clones(&backend, &self.run_id, deadline).await {
            tracing::warn!("could not drop what is left of this run: {e}");
        }
        for failure in &failures {
            dbfork_meta::say!(
                "dbfork: warning: could not drop {failure}; `dbfork db gc` removes it later"
            );
        }
        self.envs.clear();
        if !failures.is_empty() {
            if let Err(e) = backend.server_version().await {
                return Teardown::ServerGone(e.to_string());
            }
        }
        if vanished.is_empty() {
            Teardown::Clean
        } else {
            Teardown::Vanished(vanished)
        }
    }

    /// One record per collected test: its outcome, or "not run".
    pub(super) fn final_records(&self) -> Vec<TestRecord> {
        match self.machine.tests() {
            Some(items) if self.protocol() => items
                .iter()
                .enumerate()
                .filter(|(index, _)| self.machine.selected(*index))
                .map(|(index, item)| {
                    self.records
                        .get(index)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| TestRecord {
                            index,
                            id: item.id.clone(),
                            file: item.file.clone(),
                            class: item.class.clone(),
                            outcome: Outcome::NotRun,
                            duration: 0.0,
                            slot: None,
                            worker_id: None,
                            phases: Vec::new(),
                            longrepr: None,
                            stdout: String::new(),
                            stderr: String::new(),
                            tries: Vec::new(),
                            diagnosis: None,
                        })
                })
                .collect(),
            _ => self.records.iter().flatten().cloned().collect(),
        }
    }
}
