//! Facts about processes on this host: who owns what dbfork creates, and
//! whether that owner is still alive. A pid means something only in the PID
//! namespace of the kernel boot it was read in, so an owner is its pid, its
//! start time (a reused pid is not the owner), its host name, and its
//! *machine*: the boot id plus the PID namespace. Where any of these differ
//! from ours, or are unknown, dbfork cannot tell whether the owner lives
//! ([`Liveness::Unknown`]) and its callers fall back to the heartbeat.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The owner of a database: a process on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process start time in clock ticks since boot (`/proc/PID/stat`), 0 if unknown.
    pub start: u64,
    pub host: String,
    /// Where `pid` means something: [`machine_id`] of the process that recorded
    /// it ("" when unknown, e.g. written by an older dbfork).
    #[serde(default)]
    pub machine: String,
}

/// Whether an owner's process still runs, as far as this process can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Another host, another boot or PID namespace (a container), no owner
    /// process, or facts missing: only a heartbeat can tell.
    Unknown,
}

impl Owner {
    pub fn this_process() -> Owner {
        Owner::of_pid(std::process::id())
    }

    pub fn parent_process() -> Owner {
        Owner::of_pid(std::os::unix::process::parent_id())
    }

    /// The process that outlives this command: the parent, or, when the
    /// parent only wraps this command and exits with it (`timeout`, `env`,
    /// `nice`, `sudo`, ...; a forked subshell of `$(...)`, `( )` or a
    /// pipeline), the first ancestor that does not. Also the wrappers passed
    /// over, `name (pid N)` each, for the caller to say so.
    pub fn lasting_parent() -> (Owner, Vec<String>) {
        let mut pid = std::os::unix::process::parent_id();
        let mut skipped = Vec::new();
        while let Some(parent) = parent_of(pid).filter(|p| *p > 1) {
            let name = command_name(pid).unwrap_or_default();
            let wrapper = WRAPPERS.contains(&name.as_str());
            if !(wrapper || is_forked_subshell(pid, parent)) {
                break;
            }
            skipped.push(format!("{name} (pid {pid})"));
            pid = parent;
        }
        (Owner::of_pid(pid), skipped)
    }

    pub fn of_pid(pid: u32) -> Owner {
        Owner {
            pid,
            start: start_ticks(pid).unwrap_or(0),
            host: host_name(),
            machine: machine_id().to_string(),
        }
    }

    /// No process owns it: only an explicit drop or an expired heartbeat ends it.
    pub fn nobody() -> Owner {
        Owner {
            pid: 0,
            ..Owner::of_pid(0)
        }
    }

    /// Whether the owner runs, when this process can know: same host, same
    /// boot, same PID namespace, and a start time to tell a reused pid apart.
    pub fn liveness(&self) -> Liveness {
        let here = machine_id();
        if self.pid == 0
            || self.start == 0
            || self.machine.is_empty()
            || here.is_empty()
            || self.machine != here
            || self.host != host_name()
        {
            return Liveness::Unknown;
        }
        if is_alive(self.pid, self.start) {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }
}

/// This kernel boot and PID namespace, `<boot id>/<pid namespace inode>`: two
/// processes with the same value see the same pids. "" when either cannot be
/// read (no /proc), and then no owner's liveness is known here.
pub fn machine_id() -> &'static str {
    static MACHINE: OnceLock<String> = OnceLock::new();
    MACHINE.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        // `pid:[4026531836]`: the namespace's inode.
        let namespace = std::fs::read_link("/proc/self/ns/pid")
            .map(|l| l.to_string_lossy().trim_start_matches("pid:").to_string())
            .unwrap_or_default();
        if boot.is_empty() || namespace.is_empty() {
            String::new()
        } else {
            format!("{boot}/{namespace}")
        }
    })
}

/// Programs that run one command and exit with it: an owner behind one of
/// them would be gone as soon as dbfork is.
const WRAPPERS: &[&str] = &[
    "timeout",
    "env",
    "nice",
    "nohup",
    "setsid",
    "stdbuf",
    "time",
    "ionice",
    "taskset",
    "chrt",
    "sudo",
    "doas",
    "unbuffer",
    "chronic",
    "catchsegv",
];

/// The parent pid of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command name: state, then the parent pid.
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A shell's forked subshell (`$(...)`, `( )`, a stage of a pipeline) has
/// its parent's program and arguments, and exits when its commands end.
fn is_forked_subshell(pid: u32, parent: u32) -> bool {
    let cmdline = |p: u32| std::fs::read(format!("/proc/{p}/cmdline")).ok();
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let shell = command_name(pid).is_some_and(|n| SHELLS.contains(&n.as_str()));
    shell && exe(pid).is_some() && exe(pid) == exe(parent) && cmdline(pid) == cmdline(parent)
}

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"];

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
    crate::sys::host_name().unwrap_or_else(|| "localhost".to_string())
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// What names a private directory's owner: `<pid>-<PID namespace inode>`.
/// The namespace is part of it because `/tmp` may be shared between PID
/// namespaces (containers), where this pid means nothing.
pub fn private_dir_owner() -> String {
    format!("{}-{}", std::process::id(), pid_namespace())
}

/// This process's PID namespace inode, "0" when unknown.
fn pid_namespace() -> &'static str {
    match machine_id().rsplit_once('/') {
        Some((_, namespace)) if !namespace.is_empty() => namespace,
        _ => "0",
    }
}

/// Removes the private directories `<temp dir>/<prefix><pid>-<namespace>-...`
/// ([`private_dir_owner`]) whose process is gone (killed with SIGKILL before
/// it could remove them; they may hold a socket or a client option file with
/// a password); returns them. Only this user's, only of this PID namespace,
/// and only when the pid in the name is dead.
pub fn collect_stale_dirs(prefix: &str) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let me = crate::sys::euid();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let mut fields = rest.split('-');
        let (Some(Ok(pid)), Some(namespace)) =
            (fields.next().map(str::parse::<u32>), fields.next())
        else {
            continue;
        };
        // Another namespace's pid says nothing here.
        if namespace != pid_namespace() || namespace == "0" {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let dead = crate::sys::is_gone(pid);
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
        assert!(!machine_id().is_empty(), "Linux has /proc");
        assert_eq!(me.liveness(), Liveness::Alive);
        let reused = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(), Liveness::Dead);
        // Another namespace's, another boot's or an older dbfork's pid: unknown, never dead.
        for machine in ["", "other-boot/4026531836"] {
            let elsewhere = Owner {
                pid: u32::MAX - 1,
                machine: machine.to_string(),
                ..me.clone()
            };
            assert_eq!(elsewhere.liveness(), Liveness::Unknown, "{machine:?}");
        }
        assert_eq!(Owner::nobody().liveness(), Liveness::Unknown);
    }
}
