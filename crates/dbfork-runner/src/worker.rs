//! Worker processes: each in its own process group (so a signal reaches the
//! whole tree a test may have started, and the terminal's Ctrl-C reaches only
//! dbfork, which decides), killed by the kernel if dbfork dies, its output
//! kept as a bounded tail for crash reports and, on request, echoed.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use dbfork_engine::sys;

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
    // SAFETY: between fork and exec only async-signal-safe calls
    // (die_with_parent's prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            // If dbfork dies (even by SIGKILL), the kernel kills the worker;
            // if it died already, the worker exits.
            sys::die_with_parent(parent);
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
        take_line(&buf, &tail, &echo, is_stderr);
    }
}

/// One line of a worker's output (with or without its newline) into its
/// tail, and echoed.
fn take_line(bytes: &[u8], tail: &Tail, echo: &Echo, is_stderr: bool) {
    let line = String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_string();
    if let Echo::Prefixed(prefix) = echo {
        if is_stderr {
            dbfork_meta::say!("{prefix}{line}");
        } else {
            dbfork_meta::out!("{prefix}{line}");
        }
    }
    tail.push(line);
}

/// The output of a worker that dbfork did not start itself (one forked
/// from the controller): a FIFO in the run's private directory, which the
/// worker opens for its stdout and stderr. dbfork holds it open for writing
/// too (so it never reads an end before the worker opened it), which means
/// no end comes when the worker exits: [`Fifo::drain`] then reads what is
/// left and stops.
pub struct Fifo {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
    /// dbfork's own write end, where a FIFO cannot be opened for both (not
    /// Linux).
    #[cfg(not(target_os = "linux"))]
    _writer: tokio::net::unix::pipe::Sender,
}

impl Fifo {
    /// Makes the FIFO `path` (which must not exist) and reads it into
    /// `tail` (and `echo`) from now on.
    pub fn open(path: &Path, tail: Tail, echo: Echo) -> io::Result<Fifo> {
        sys::make_fifo(path)?;
        #[cfg(target_os = "linux")]
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(path)?;
        #[cfg(not(target_os = "linux"))]
        let receiver = tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)?;
        #[cfg(not(target_os = "linux"))]
        let writer = tokio::net::unix::pipe::OpenOptions::new().open_sender(path)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(read_fifo(receiver, stopped, tail, echo));
        Ok(Fifo {
            stop,
            done,
            #[cfg(not(target_os = "linux"))]
            _writer: writer,
        })
    }

    /// Reads what the worker, which has exited, left in the FIFO; then stops.
    pub async fn drain(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

async fn read_fifo(
    mut receiver: tokio::net::unix::pipe::Receiver,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    tail: Tail,
    echo: Echo,
) {
    use tokio::io::AsyncReadExt;

    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let take = |pending: &mut Vec<u8>, bytes: &[u8]| {
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            take_line(&line, &tail, &echo, false);
        }
    };
    loop {
        tokio::select! {
            biased;
            read = receiver.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => take(&mut pending, &chunk[..n]),
            },
            _ = &mut stopped => break,
        }
    }
    // What is still in the pipe, read directly: the descriptor is
    // non-blocking, and the writer is gone.
    loop {
        let n = sys::read_now(&receiver, &mut chunk);
        if n == 0 {
            break;
        }
        take(&mut pending, &chunk[..n]);
    }
    if !pending.is_empty() {
        take_line(&pending, &tail, &echo, false);
    }
}

/// Writes the lines sent to the returned sender, each with its newline, in
/// order, until the connection breaks or every sender is gone.
pub fn line_writer(
    mut write: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
) -> tokio::sync::mpsc::UnboundedSender<String> {
    use tokio::io::AsyncWriteExt;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// After the worker itself ended: ends what is left of its process group
/// (a test's stray subprocess) and forgets the group.
pub fn reap(pid: u32) {
    signal_group(pid, sys::SIGKILL);
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
pub fn signal_group(pid: u32, signal: sys::Signal) {
    sys::signal_group(pid, signal);
}

/// How a worker process ended, in words: `exit code 3`, `signal 11 (SIGSEGV)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig} ({})", sys::signal_name(sig)),
        _ => "an unknown status".to_string(),
    }
}
