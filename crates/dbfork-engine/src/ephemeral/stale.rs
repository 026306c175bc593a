//! What a killed dbfork left: stale server directories found, their
//! servers stopped, the directories (and PostgreSQL's shared memory) removed.

use super::*;

/// Removes what a killed dbfork left: every ephemeral directory whose owner
/// process is dead (stop its server, remove the directory). Called at every
/// start. Returns the directories removed.
pub fn collect_stale() -> Vec<PathBuf> {
    collect_stale_in(&tmp_roots())
}

pub(super) fn collect_stale_in(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry
                .file_name()
                .as_bytes()
                .starts_with(DIR_PREFIX.as_bytes())
            {
                continue;
            }
            let dir = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() || !is_stale(&dir, &meta) {
                continue;
            }
            if let Some(server) = read_owner(&dir.join("server")) {
                kill_stale_server(&server, &dir);
            }
            match remove_server_dir(&dir) {
                Ok(()) => {
                    tracing::info!(
                        "removed the stale ephemeral server directory {}",
                        dir.display()
                    );
                    removed.push(dir);
                }
                Err(e) => tracing::warn!(
                    "could not remove the stale ephemeral server directory {}: {e}",
                    dir.display()
                ),
            }
        }
    }
    removed
}

/// Whether the owner of an ephemeral directory is gone.
pub(super) fn is_stale(dir: &Path, meta: &std::fs::Metadata) -> bool {
    match read_owner(&dir.join("owner")) {
        // Another host's or PID namespace's pids mean nothing here (a shared
        // /tmp): only an owner known dead makes it stale.
        Some(owner) => owner.liveness() == Liveness::Dead,
        None => meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > OWNERLESS_GRACE),
    }
}

/// SIGKILLs a stale server (and its process group) if it still runs and is
/// really the server of `dir`, then waits a bounded time for it to go.
pub(super) fn kill_stale_server(server: &Owner, dir: &Path) {
    if server.pid == 0 || !is_alive(server.pid, server.start) {
        return;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", server.pid)) else {
        return;
    };
    let needle = dir.as_os_str().as_bytes();
    if !cmdline.windows(needle.len()).any(|w| w == needle) {
        return;
    }
    tracing::info!(
        "killing the stale ephemeral server {} of {}",
        server.pid,
        dir.display()
    );
    kill_group(server.pid);
    let deadline = Instant::now() + KILL_WAIT;
    while is_alive(server.pid, server.start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs the process group led by `pid` (every server is a group leader),
/// or the process alone if it leads no group.
pub(super) fn kill_group(pid: u32) {
    if crate::sys::leads_group(pid) {
        crate::sys::signal_group(pid, crate::sys::SIGKILL);
    } else {
        crate::sys::signal(pid, crate::sys::SIGKILL);
    }
}

pub(super) fn signal(pid: u32, sig: crate::sys::Signal) {
    crate::sys::signal(pid, sig);
}

/// Removes a server's directory, and the System V shared memory segment a
/// killed PostgreSQL leaves behind.
pub(super) fn remove_server_dir(dir: &Path) -> std::io::Result<()> {
    release_pg_segment(dir);
    remove_dir_retrying(dir)
}

/// PostgreSQL keeps a small System V shared memory segment, whose key and id
/// are on line 7 of `postmaster.pid`; a postmaster killed with SIGKILL cannot
/// remove it. Removes it when it is that segment and nothing uses it any more.
pub(super) fn release_pg_segment(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("data").join("postmaster.pid")) else {
        return;
    };
    let mut fields = text.lines().nth(6).unwrap_or_default().split_whitespace();
    let (Some(Ok(key)), Some(Ok(id))) = (
        fields.next().map(str::parse::<i64>),
        fields.next().map(str::parse::<i32>),
    ) else {
        return;
    };
    // The server's processes detach as they die: give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let Some(segment) = crate::sys::shm_segment(id) else {
            return;
        };
        if segment.key != key {
            return;
        }
        if segment.attached == 0 {
            crate::sys::remove_shm(id);
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes a directory tree, retrying briefly: a process killed a moment ago
/// may still be finishing a write in it.
pub(super) fn remove_dir_retrying(dir: &Path) -> std::io::Result<()> {
    let mut last = None;
    for attempt in 0..8u64 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10 * (attempt + 1)));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("could not remove the directory")))
}

pub(super) fn write_owner(path: &Path, owner: &Owner) -> Result<()> {
    let text = serde_json::to_string(owner).expect("an owner serializes");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(Error::io(format!("writing {}", path.display())))
}

pub(super) fn read_owner(path: &Path) -> Option<Owner> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}
