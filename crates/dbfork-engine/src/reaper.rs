//! Nothing dbfork starts outlives it, however it ends.
//!
//! A worker gets `PR_SET_PDEATHSIG`, but that reaches only the process
//! dbfork started, not what it started in turn (a setup command's `migrate`
//! under `sh -c`, a test's subprocess, a background job). So every process
//! group dbfork starts is also handed to the *reaper*: a small helper process
//! (this same binary, started with `DBFORK_REAPER=1`) in a process group of its
//! own, which reads `+PGID` / `-PGID` lines from a pipe. When the pipe closes
//! (dbfork exited, or was killed, even with SIGKILL) it kills every group still
//! registered and exits.
//!
//! The binary opts in with [`enable`] (and runs [`main_if_reaper`] first
//! thing), so a library user or a test binary never starts one.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const ENV: &str = "DBFORK_REAPER";

static ENABLED: AtomicBool = AtomicBool::new(false);
static REAPER: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);

/// Lets this process start a reaper (the `dbfork` binary calls it).
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// When this process was started as a reaper: does the reaper's work and
/// exits. Otherwise returns at once.
pub fn main_if_reaper() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let mut groups: Vec<u32> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<u32>() else {
            continue;
        };
        match sign {
            "+" if pgid > 1 => groups.push(pgid),
            "-" => groups.retain(|g| *g != pgid),
            _ => {}
        }
    }
    for pgid in groups {
        crate::sys::signal_group(pgid, crate::sys::SIGKILL);
    }
    std::process::exit(0);
}

/// Hands process group `pgid` to the reaper (started on first use). Best
/// effort: without a reaper dbfork still kills its groups itself on every
/// way out it lives through.
pub fn register(pgid: u32) {
    send(&format!("+{pgid}\n"));
}

/// The group is gone (dbfork killed it or saw it end): the reaper forgets it,
/// so a reused number is never signalled.
pub fn unregister(pgid: u32) {
    send(&format!("-{pgid}\n"));
}

/// Starts the reaper now, before a process is spawned (when this process may
/// have one): the registration right after the spawn is then one write to
/// a pipe, with no window (the reaper's own start) in which a SIGKILL of
/// dbfork would leave the new group running.
pub fn arm() {
    with_reaper(|_| {});
}

fn send(line: &str) {
    with_reaper(|stdin| {
        if let Err(e) = stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
        {
            tracing::warn!("the reaper process is gone: {e}");
        }
    });
}

/// Runs `f` on the pipe to the reaper, started on first use.
fn with_reaper(f: impl FnOnce(&mut ChildStdin)) {
    if !ENABLED.load(Ordering::SeqCst) {
        return;
    }
    let Ok(mut reaper) = REAPER.lock() else {
        return;
    };
    if reaper.is_none() {
        match start() {
            Ok(started) => *reaper = Some(started),
            Err(e) => {
                tracing::warn!("could not start the reaper process: {e}");
                ENABLED.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
    if let Some((_, stdin)) = reaper.as_mut() {
        f(stdin);
    }
}

fn start() -> std::io::Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: the terminal's Ctrl-C, and dbfork's signals to its
        // workers' groups, never reach it.
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the reaper"))?;
    Ok((child, stdin))
}
