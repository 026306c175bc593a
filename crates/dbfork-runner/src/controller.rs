//! The run's controller: the test command started once more, before any
//! worker, as pytest-xdist's controller process (`DBFORK_ROLE=controller`).
//!
//! The test tool configures itself there exactly as in the workers (the
//! user's arguments, plugins, conftest files, Django's settings) and reports
//! what it found: its environment afterwards, which the workers inherit, and
//! for a Django project what the template depends on and where the tests'
//! database lives. When dbfork needs a new template, the controller builds it
//! with the project's own test database setup (pytest-django's, or the
//! project's `TEST_RUNNER`), so the template is what the tests would have made
//! for themselves. It runs no test and stays until the run ends, so whatever
//! its configuration made (a temporary directory named in the environment)
//! lives as long as the workers need it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use dbfork_engine::ops::{self, Cancel};
use dbfork_protocol::{
    self as protocol, env, BuildTarget, DjangoReport, RunnerMessage, WorkerMessage,
};
use tokio::io::BufReader;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use crate::error::{exit, RunError};
use crate::worker::{self, Echo, Environment, Tail};

/// How many lines of the controller's output are kept (for its log file).
const OUTPUT_LINES: usize = 20_000;

/// What the controller found, configured as the tests are.
#[derive(Debug, Clone, Default)]
pub struct Configured {
    /// Variables the tool's configuration set or changed, which every worker
    /// inherits (as pytest-xdist's workers inherit its controller's).
    pub env_set: BTreeMap<String, String>,
    /// Variables it removed.
    pub env_unset: Vec<String>,
    pub django: Option<DjangoReport>,
    /// Why no Django project was found where one might be expected.
    pub note: Option<String>,
    /// The `DATABASE_URL` the controller was started with (dbfork's, or the
    /// user's own), if any.
    pub database_url: Option<String>,
    /// The controller's Python interpreter.
    pub python: Option<String>,
}

/// The exit status, once the process has ended (`Some(None)`: unknown).
type ExitWatch = watch::Receiver<Option<Option<ExitStatus>>>;

/// The controller process and its connection.
pub struct Controller {
    pid: u32,
    tail: Tail,
    exit: ExitWatch,
    messages: mpsc::UnboundedReceiver<Result<WorkerMessage, String>>,
    /// Lines to the controller, written in order by a task of their own.
    write: mpsc::UnboundedSender<String>,
    /// The test tool is pytest (for the hints of its errors).
    pytest: bool,
}

/// The controller's connection once the workers are forked from it: orders
/// go out through `orders` (encoded lines), its answers (`forked`, `exited`)
/// come in on `messages` until it ends.
pub struct ForkLine {
    pub orders: mpsc::UnboundedSender<String>,
    pub messages: mpsc::UnboundedReceiver<Result<WorkerMessage, String>>,
}

/// Why waiting on the controller ended without what was waited for.
enum Interruption {
    Exited(Option<ExitStatus>),
    Cancelled,
    TimedOut,
}

impl Controller {
    /// Starts `command` as the controller, with `vars` on top of dbfork's
    /// environment, and waits (at most `deadline`) until it has configured
    /// itself.
    pub async fn start(
        command: &[String],
        vars: Vec<(String, String)>,
        run_dir: &Path,
        deadline: Duration,
        cancel: &Cancel,
        pytest: bool,
    ) -> Result<(Controller, Configured), RunError> {
        let socket = run_dir.join("controller.sock");
        let listener = UnixListener::bind(&socket).map_err(|source| RunError::RunDir {
            path: socket.clone(),
            source,
        })?;
        let mut set = vars;
        set.extend([
            (env::SOCKET.to_string(), socket.display().to_string()),
            (env::ROLE.to_string(), "controller".to_string()),
            (env::WORKER_ID.to_string(), "controller".to_string()),
        ]);
        let mut given: BTreeMap<String, String> = std::env::vars().collect();
        given.extend(set.iter().cloned());
        let environment = Environment {
            set,
            unset: Vec::new(),
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let tail = Tail::with_capacity(OUTPUT_LINES);
        let spawned = worker::spawn(command, &environment, &cwd, Echo::Quiet, tail)
            .map_err(|e| RunError::Controller {
                code: exit::USAGE,
                message: format!(
                    "cannot start the test command `{}`: {e}. Check that it is installed and on PATH (or give its path), e.g. `dbfork run -- .venv/bin/python -m pytest`.",
                    command.first().map(String::as_str).unwrap_or_default()
                ),
            })?;
        let (exit_tx, exit) = watch::channel(None);
        let mut child = spawned.child;
        let pid = spawned.pid;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            worker::reap(pid);
            let _ = exit_tx.send(Some(status));
        });
        let until = Instant::now() + deadline;
        let accepted = interruptible(&exit, until, cancel, listener.accept()).await;
        let tail = spawned.tail;
        let stream = match accepted {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(source)) => {
                return Err(RunError::RunDir {
                    path: socket,
                    source,
                })
            }
            Err(why) => {
                worker::signal_group(pid, dbfork_engine::sys::SIGKILL);
                return Err(configure_error(why, &tail, deadline, pytest));
            }
        };
        let (read, write) = stream.into_split();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(read_messages(read, messages_tx));
        let write = worker::line_writer(write);
        let mut controller = Controller {
            pid,
            tail,
            exit,
            messages,
            write,
            pytest,
        };
        match controller.configured(given, until, cancel).await {
            Ok(configured) => Ok((controller, configured)),
            Err(e) => {
                controller.kill();
                Err(e)
            }
        }
    }

    /// Waits for `configured` and works out what the workers inherit.
    async fn configured(
        &mut self,
        given: BTreeMap<String, String>,
        until: Instant,
        cancel: &Cancel,
    ) -> Result<Configured, RunError> {
        loop {
            let message = match interruptible(&self.exit, until, cancel, self.messages.recv()).await
            {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(self.protocol_error(&e)),
                Ok(None) => return Err(self.configure_error(Interruption::Exited(None), until)),
                Err(why) => return Err(self.configure_error(why, until)),
            };
            match message {
                WorkerMessage::Hello { .. } => {}
                WorkerMessage::Configured {
                    env: reported,
                    django,
                    note,
                    python,
                } => {
                    let (env_set, env_unset) = inherited(&given, &reported);
                    return Ok(Configured {
                        env_set,
                        env_unset,
                        django,
                        note,
                        database_url: given.get("DATABASE_URL").cloned(),
                        python,
                    });
                }
                other => {
                    return Err(
                        self.protocol_error(&format!("expected `configured`, got {other:?}"))
                    )
                }
            }
        }
    }

    /// Has the controller build the template into `target` (created empty by
    /// dbfork) with the project's own test database setup. `log_dir` keeps
    /// the controller's output when the build fails.
    pub async fn build(
        &mut self,
        target: BuildTarget,
        template: &str,
        deadline: Duration,
        cancel: &Cancel,
        log_dir: &Path,
    ) -> dbfork_engine::Result<()> {
        let failed = |cause: String| dbfork_engine::Error::TemplateBuild {
            template: template.to_string(),
            cause,
        };
        self.send(&RunnerMessage::Build { database: target })
            .await
            .map_err(|e| failed(format!("the controller's connection broke ({e})")))?;
        let until = Instant::now() + deadline;
        loop {
            let message = interruptible(&self.exit, until, cancel, self.messages.recv()).await;
            let answer = match message {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(failed(e)),
                Ok(None) | Err(Interruption::Exited(_)) => {
                    let status = (*self.exit.borrow()).flatten();
                    let how = status
                        .as_ref()
                        .map(worker::describe_exit)
                        .unwrap_or_else(|| "its connection closed".to_string());
                    return Err(failed(format!(
                        "The test process ended ({how}) while it built the template. {}{}",
                        ops::failure_excerpt(&self.tail.lines()),
                        self.keep_log(log_dir, template)
                    )));
                }
                Err(Interruption::Cancelled) => {
                    // The half-built template is dropped next: nothing may write to it.
                    self.kill();
                    return Err(dbfork_engine::Error::Interrupted);
                }
                Err(Interruption::TimedOut) => {
                    self.kill();
                    return Err(failed(format!(
                        "It ran longer than {deadline:?} and was stopped; raise --build-timeout if the migrations really need longer.{}",
                        self.keep_log(log_dir, template)
                    )));
                }
            };
            match answer {
                WorkerMessage::Built {
                    error: Some(error), ..
                } => {
                    return Err(failed(format!(
                        "It raised:\n{}{}",
                        error.trim_end(),
                        self.keep_log(log_dir, template)
                    )))
                }
                WorkerMessage::Built { .. } => return Ok(()),
                WorkerMessage::Bye => {}
                other => {
                    return Err(failed(format!(
                        "the controller answered {other:?} instead of `built`"
                    )))
                }
            }
        }
    }

    /// Tells the controller the run is over and waits (at most `grace`) for
    /// it to end as the tool ends; kills it after that.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.send(&RunnerMessage::Stop).await;
        let ended = tokio::time::timeout(grace, wait_exit(self.exit.clone())).await;
        if ended.is_err() {
            tracing::warn!("the controller did not end within {grace:?}; killing it");
        }
        self.kill();
    }

    /// Ends the controller's whole process group at once.
    pub fn kill(&self) {
        worker::signal_group(self.pid, dbfork_engine::sys::SIGKILL);
    }

    async fn send(&mut self, message: &RunnerMessage) -> std::io::Result<()> {
        self.write
            .send(protocol::encode(message))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    /// The connection for forking workers: from now on the controller's
    /// messages go to the returned receiver (no more builds are asked).
    pub fn fork_line(&mut self) -> ForkLine {
        let (_, closed) = mpsc::unbounded_channel();
        ForkLine {
            orders: self.write.clone(),
            messages: std::mem::replace(&mut self.messages, closed),
        }
    }

    fn protocol_error(&self, what: &str) -> RunError {
        RunError::Controller {
            code: exit::USAGE,
            message: format!("the controller sent something dbfork cannot read ({what}); install matching versions of dbfork and its adapter"),
        }
    }

    fn configure_error(&self, why: Interruption, until: Instant) -> RunError {
        let deadline = until.saturating_duration_since(Instant::now());
        configure_error(why, &self.tail, deadline, self.pytest)
    }

    /// Writes the controller's output to `log_dir` and says where, as a sentence.
    fn keep_log(&self, log_dir: &Path, template: &str) -> String {
        ops::keep_log(
            log_dir,
            &format!("build-{template}.log"),
            &self.tail.lines(),
        )
        .map(|p| format!("\nThe test process's whole output is in {}.", p.display()))
        .unwrap_or_default()
    }
}

/// Variables that the test tool's own configuration sets in every process
/// and reads before a project's `conftest.py` runs: a worker that inherited
/// one would configure itself differently from the serial run (pytest-django
/// sets Django up from an inherited `DJANGO_SETTINGS_MODULE` before the
/// conftest that would have chosen or changed the settings), so each worker
/// sets them again itself, as the serial run does.
const SET_BY_THE_TOOL: &[&str] = &[
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_CONFIGURATION",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_CURRENT_TEST",
    "PYTEST_VERSION",
];

/// The variables whose values the controller's configuration set or
/// changed, and those it removed, compared with what it was given. dbfork's
/// own (`DBFORK_*`) are not inherited: each worker gets its own; nor are the
/// ones the tool sets for itself when the user did not ([`SET_BY_THE_TOOL`]).
fn inherited(
    given: &BTreeMap<String, String>,
    reported: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let ours = |name: &str| {
        name.starts_with("DBFORK_")
            || (SET_BY_THE_TOOL.contains(&name) && !given.contains_key(name))
    };
    let set = reported
        .iter()
        .filter(|(k, v)| !ours(k) && given.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let unset = given
        .keys()
        .filter(|k| !ours(k) && !reported.contains_key(*k))
        .cloned()
        .collect();
    (set, unset)
}

/// Awaits `work` unless the process exits, `cancel` fires or `until` passes.
async fn interruptible<T>(
    exit: &ExitWatch,
    until: Instant,
    cancel: &Cancel,
    work: impl Future<Output = T>,
) -> Result<T, Interruption> {
    tokio::select! {
        done = work => Ok(done),
        status = wait_exit(exit.clone()) => Err(Interruption::Exited(status)),
        _ = cancel.cancelled() => Err(Interruption::Cancelled),
        _ = tokio::time::sleep_until(until.into()) => Err(Interruption::TimedOut),
    }
}

async fn wait_exit(mut exit: ExitWatch) -> Option<ExitStatus> {
    loop {
        if let Some(status) = *exit.borrow_and_update() {
            return status;
        }
        if exit.changed().await.is_err() {
            return None;
        }
    }
}

async fn read_messages(
    read: OwnedReadHalf,
    messages: mpsc::UnboundedSender<Result<WorkerMessage, String>>,
) {
    let mut reader = BufReader::new(read);
    loop {
        let message = match worker::read_line(&mut reader).await {
            Ok(Some(line)) => protocol::decode::<WorkerMessage>(&line).map_err(|e| e.to_string()),
            Ok(None) => return,
            Err(why) => Err(why),
        };
        let stop = message.is_err();
        if messages.send(message).is_err() || stop {
            return;
        }
    }
}

/// The error for a controller that did not get as far as `configured`.
fn configure_error(why: Interruption, tail: &Tail, deadline: Duration, pytest: bool) -> RunError {
    let output = ops::failure_excerpt(&tail.lines());
    match why {
        Interruption::Cancelled => RunError::Engine(dbfork_engine::Error::Interrupted),
        Interruption::TimedOut => RunError::Controller {
            code: exit::SETUP_OR_DATABASE,
            message: format!("the test command did not finish configuring itself within {deadline:?} (it imports the project and its conftest files before any test runs); raise --start-timeout if it really needs longer. {output}"),
        },
        Interruption::Exited(status) => {
            let code = status.and_then(|s| s.code());
            let how = status
                .as_ref()
                .map(worker::describe_exit)
                .unwrap_or_else(|| "an unknown status".to_string());
            let lines = tail.lines();
            let (code, why) = match (code, raised(&lines)) {
                (Some(4), _) => (exit::USAGE, "the test command refused its arguments (usage error)".to_string()),
                // What the serial run would have said, first, with its exit code.
                (code, Some(exception)) => (
                    code.filter(|c| *c > 0).unwrap_or(exit::SETUP_OR_DATABASE),
                    format!("the test command failed while it configured itself, before any test ran: {exception}. The serial run (the same command without dbfork) fails the same way"),
                ),
                (Some(0..=2 | 5), None) => (exit::USAGE, format!(
                    "the test command ended before it connected to dbfork: it could not start (see its output), or it ran without dbfork's adapter ({})",
                    if pytest {
                        "`-p no:dbfork` in PYTEST_ADDOPTS or the configuration; use `--adapter none` to run the command once per worker instead"
                    } else {
                        "a script that does not run Django's test runner, or a TEST_RUNNER that is not a DiscoverRunner; use `--adapter none` to run the command once per worker instead"
                    }
                )),
                _ => (exit::SETUP_OR_DATABASE, format!("the test command ended ({how}) while it configured itself, before any test ran")),
            };
            RunError::Controller {
                code,
                message: format!("{why}. {output}"),
            }
        }
    }
}

/// The exception a Python process's output ends with: the first line after
/// its last traceback's frames (`ImportError: No module named 'x'`).
fn raised(lines: &[String]) -> Option<String> {
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))?;
    lines[start + 1..]
        .iter()
        .find(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_inherit_what_configuration_changed() {
        let given: BTreeMap<String, String> = [
            ("HOME", "/root"),
            ("KEEP", "1"),
            ("GONE", "x"),
            ("DBFORK_ROLE", "controller"),
            ("DBFORK_SOCKET", "/tmp/s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let reported: BTreeMap<String, String> = [
            ("HOME", "/root"),
            ("KEEP", "2"),
            ("DATA_DIR", "/tmp/pytest-of-root/data"),
            ("DBFORK_ROLE", "controller"),
            // A conftest's os.environ.setdefault: each worker's does it again.
            ("DJANGO_SETTINGS_MODULE", "proj.settings"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (set, unset) = inherited(&given, &reported);
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            [
                (
                    "DATA_DIR".to_string(),
                    "/tmp/pytest-of-root/data".to_string()
                ),
                ("KEEP".to_string(), "2".to_string())
            ]
        );
        assert_eq!(unset, ["GONE"]);
    }
}
