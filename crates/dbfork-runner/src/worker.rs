//! Worker processes: each in its own process group (so a signal reaches the
//! whole tree a test may have started, and the terminal's Ctrl-C reaches only
//! dbfork, which decides), killed by the kernel if dbfork dies, its output
//! kept as a bounded tail for crash reports and, on request, echoed.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How many lines of a worker's output are kept for its crash report.
const TAIL_LINES: usize = 100;

/// The last lines a worker wrote, stdout and stderr interleaved as they came.
#[derive(Debug, Clone)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail::with_capacity(TAIL_LINES)
    }
}

impl Tail {
    /// A tail that keeps the last `capacity` lines.
    pub fn with_capacity(capacity: usize) -> Tail {
        Tail {
            lines: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == self.capacity {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Where a worker's output goes besides its tail.
#[derive(Debug, Clone)]
pub enum Echo {
    /// Only the tail.
    Quiet,
    /// Each line to dbfork's stdout (or stderr), behind this prefix.
    Prefixed(String),
}

/// A started worker process.
pub struct Spawned {
    pub pid: u32,
    pub child: Child,
    pub tail: Tail,
}

/// What a worker's environment is: dbfork's own, without `unset`, with `set`.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub set: Vec<(String, String)>,
    pub unset: Vec<String>,
}

/// Starts `command` in `cwd` with `env` applied to dbfork's own environment;
/// its output goes to `tail` (and to `echo`).
pub fn spawn(
    command: &[String],
    env: &Environment,
    cwd: &Path,
    echo: Echo,
    tail: Tail,
) -> io::Result<Spawned> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    for name in &env.unset {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .current_dir(cwd)
        .envs(env.set.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // If dbfork dies (even by SIGKILL), the kernel kills the worker.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // dbfork may already have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    dbfork_engine::reaper::arm();
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or_default();
    // Whatever the worker starts (a test's subprocesses) dies with dbfork too.
    dbfork_engine::reaper::register(pid);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, tail.clone(), echo.clone(), false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, tail.clone(), echo, true));
    }
    Ok(Spawned { pid, child, tail })
}

async fn pump(stream: impl AsyncRead + Unpin, tail: Tail, echo: Echo, is_stderr: bool) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if let Echo::Prefixed(prefix) = &echo {
            if is_stderr {
                eprintln!("{prefix}{line}");
            } else {
                println!("{prefix}{line}");
            }
        }
        tail.push(line);
    }
}

/// After the worker itself ended: ends what is left of its process group
/// (a test's stray subprocess) and forgets the group.
pub fn reap(pid: u32) {
    signal_group(pid, libc::SIGKILL);
    dbfork_engine::reaper::unregister(pid);
}

/// The longest protocol line dbfork reads from a worker (a result with its
/// captured output fits many times over); a longer one ends the connection.
pub const MAX_LINE: usize = 16 << 20;

/// One protocol line (without its `\n`), at most [`MAX_LINE`] bytes: `Ok(None)`
/// at the end of the stream, `Err` with why for an oversized line. A read
/// error (a worker that died mid-write: connection reset) is an end like any
/// other: the worker's exit says what happened, not the socket.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf().await {
            Ok(available) => available,
            Err(e) => {
                tracing::debug!("a worker's connection ended with an error: {e}");
                return Ok(None);
            }
        };
        if available.is_empty() {
            // The end; a last line without its newline was cut off mid-message.
            return Ok(None);
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&available[..end]);
                reader.consume(end + 1);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            None => {
                let n = available.len();
                line.extend_from_slice(available);
                reader.consume(n);
                if line.len() > MAX_LINE {
                    return Err(format!(
                        "a line longer than {} MiB, the most dbfork reads",
                        MAX_LINE >> 20
                    ));
                }
            }
        }
    }
}

/// Sends `signal` to the worker's whole process group.
pub fn signal_group(pid: u32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid addresses the group; no memory involved.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}

/// How a worker process ended, in words: `exit code 3`, `signal 11 (SIGSEGV)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig} ({})", signal_name(sig)),
        _ => "an unknown status".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}
