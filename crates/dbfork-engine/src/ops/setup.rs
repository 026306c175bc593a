//! The setup command: run in its own process group, its output kept, its
//! failure told with the exception first.

use super::*;

/// How many lines of a failing setup command's output the error shows.
pub(super) const TAIL_LINES: usize = 25;

/// Runs the setup command against the new template, streaming its output.
pub(super) async fn run_setup(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    cancel: &Cancel,
    name: &str,
) -> Result<()> {
    let env = DatabaseEnv::new(backend, name)?;
    let mut child = spawn_setup(recipe, &env)?;
    let pid = child.id();
    if let Some(pid) = pid {
        // Its group dies with dbfork, even when dbfork is killed with SIGKILL.
        crate::reaper::register(pid);
    }
    let output = std::sync::Mutex::new(VecDeque::new());
    let echo = options.echo_setup;
    // A background child of the setup may hold its output open after the
    // setup itself ended: reading stops a moment after the setup's exit.
    let (exited_tx, exited_rx) = watch::channel(false);
    let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let output = &output;
        let mut exited = exited_rx.clone();
        async move {
            let Some(stream) = stream else { return };
            let mut lines = BufReader::new(stream).lines();
            let drained = async {
                while !*exited.borrow_and_update() {
                    if exited.changed().await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(OUTPUT_AFTER_EXIT).await;
            };
            tokio::pin!(drained);
            loop {
                let line = tokio::select! {
                    line = lines.next_line() => line,
                    () = &mut drained => return,
                };
                let Ok(Some(line)) = line else { return };
                if echo {
                    dbfork_meta::say!("  setup | {line}");
                }
                if let Ok(mut output) = output.lock() {
                    if output.len() == KEPT_LINES {
                        output.pop_front();
                    }
                    output.push_back(line);
                }
            }
        }
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let outcome = async {
        let waited = async {
            let status = child.wait().await;
            let _ = exited_tx.send(true);
            status
        };
        let (status, _, _) = tokio::join!(waited, pump(stdout), pump(stderr));
        status
    };
    let kill_group = || {
        if let Some(pid) = pid {
            crate::sys::signal_group(pid, crate::sys::SIGKILL);
            crate::reaper::unregister(pid);
        }
    };
    let status = tokio::select! {
        status = outcome => status.map_err(Error::io("waiting for the setup command"))?,
        _ = tokio::time::sleep(options.build_timeout) => {
            kill_group();
            return Err(Error::SetupTimeout { command: recipe.setup.clone(), timeout: options.build_timeout, template: name.to_string() });
        }
        _ = cancel.cancelled() => {
            kill_group();
            return Err(Error::Interrupted);
        }
    };
    // Whatever the setup left running in its group must not hold the template open.
    kill_group();
    if status.success() {
        return Ok(());
    }
    let lines = output
        .lock()
        .map(|o| o.iter().cloned().collect())
        .unwrap_or_default();
    Err(setup_failed(backend, recipe, options, name, status, lines))
}

/// The error of a setup that exited with `status`, its last `lines` shown
/// (the password masked) and kept in a log file.
fn setup_failed(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    name: &str,
    status: std::process::ExitStatus,
    lines: Vec<String>,
) -> Error {
    let status = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    };
    // A setup that printed its database URL (or the password) must not
    // leave it in a log file or on the screen.
    let secret = backend.url().password.clone().filter(|p| !p.is_empty());
    let lines: Vec<String> = lines
        .into_iter()
        .map(|line| match &secret {
            Some(secret) => line.replace(secret.as_str(), "***"),
            None => line,
        })
        .collect();
    let log = options
        .log_dir
        .as_deref()
        .and_then(|dir| keep_log(dir, &format!("setup-{name}.log"), &lines));
    Error::SetupFailed {
        command: recipe.setup.clone(),
        status,
        template: name.to_string(),
        output: failure_excerpt(&lines),
        log: log
            .map(|p| format!("\nThe whole output is in {}.", p.display()))
            .unwrap_or_default(),
    }
}

/// Starts the setup command (`sh -c`) in its own process group, in the
/// recipe's directory, with the database's environment and its output piped.
fn spawn_setup(recipe: &Recipe, env: &DatabaseEnv) -> Result<tokio::process::Child> {
    crate::reaper::arm();
    let mut command = tokio::process::Command::new("sh");
    if let Some(dir) = &recipe.dir {
        command.current_dir(dir);
    }
    command
        .arg("-c")
        .arg(&recipe.setup)
        .envs(env.vars.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::SetupSpawn {
            command: recipe.setup.clone(),
            cause: e.to_string(),
        })
}

/// How long a setup's output is still read after the setup exited (what a
/// background child it left writes later is not waited for).
pub(super) const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How many lines of a setup's output are kept (for its log file).
pub(super) const KEPT_LINES: usize = 100_000;

/// Writes `lines` to `dir/file` and returns its path (`None` if it cannot).
pub fn keep_log(dir: &std::path::Path, file: &str, lines: &[String]) -> Option<std::path::PathBuf> {
    let path = dir.join(file);
    crate::files::ensure_own_dir(dir).ok()?;
    let mut text = lines.join("\n");
    text.push('\n');
    crate::files::write_replacing(&path, text.as_bytes()).ok()?;
    Some(path)
}

/// What of a failed command's output a person needs first: a Python
/// traceback's exception, then the traceback (the last one: chained ones end
/// there); without one, the last lines. Warnings printed before the failure
/// (system checks, deprecations) do not push the cause off the screen.
pub fn failure_excerpt(lines: &[String]) -> String {
    let Some(start) = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))
    else {
        let from = lines.len().saturating_sub(TAIL_LINES);
        let tail = lines[from..].join("\n");
        return if tail.trim().is_empty() {
            "Its output: (none)".to_string()
        } else {
            format!("Its last output:\n{tail}")
        };
    };
    let block = &lines[start..];
    let exception = block
        .iter()
        .skip(1)
        .position(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .map(|p| p + 1);
    match exception {
        Some(at) => {
            let raised = &block[at..block.len().min(at + TAIL_LINES)];
            format!(
                "It raised:\n{}\n\n{}",
                raised.join("\n"),
                block[..at].join("\n")
            )
        }
        None => format!("Its output ends with:\n{}", block.join("\n")),
    }
}
