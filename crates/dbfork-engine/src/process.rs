//! Facts about processes on this host: who owns what dbfork creates, and
//! whether that owner is still alive (pid plus start time, so a reused pid is
//! not mistaken for the owner).

use std::time::{SystemTime, UNIX_EPOCH};

/// The owner of a database: a process on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The process start time in clock ticks since boot (`/proc/PID/stat`), 0 if unknown.
    pub start: u64,
    pub host: String,
}

impl Owner {
    pub fn this_process() -> Owner {
        Owner::of_pid(std::process::id())
    }

    pub fn parent_process() -> Owner {
        Owner::of_pid(std::os::unix::process::parent_id())
    }

    pub fn of_pid(pid: u32) -> Owner {
        Owner {
            pid,
            start: start_ticks(pid).unwrap_or(0),
            host: host_name(),
        }
    }

    /// No process owns it: only an explicit drop or an expired heartbeat ends it.
    pub fn nobody() -> Owner {
        Owner {
            pid: 0,
            start: 0,
            host: host_name(),
        }
    }
}

/// Whether the process `pid` that started at `start` (0: any) still runs here.
pub fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(fields) = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
    else {
        return false;
    };
    // After the command name: state is field 3, starttime field 22 (1-based).
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return false;
    }
    start == 0 || fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start)
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Removes the private directories `<temp dir>/<prefix><pid>-...` whose
/// process is gone (killed with SIGKILL before it could remove them; they may
/// hold a socket or a client option file with a password); returns them. Only
/// this user's, and only when the pid in the name is dead.
pub fn collect_stale_dirs(prefix: &str) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        // SAFETY: signal 0 only probes whether the process exists.
        let dead = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if meta.is_dir()
            && meta.uid() == me
            && dead
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness() {
        let me = Owner::this_process();
        assert!(me.start > 0);
        assert!(is_alive(me.pid, me.start));
        assert!(
            !is_alive(me.pid, me.start + 1),
            "a reused pid is not the owner"
        );
        assert!(!is_alive(u32::MAX - 1, 0));
    }
}
