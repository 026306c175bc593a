//! Every call dbfork makes into the operating system beyond what `std`
//! offers, in one place and behind safe functions: signals and process
//! groups, the effective user, the host name, random bytes, file flags,
//! reflinks, file locks, FIFOs, filesystem types and System V shared memory.
//! The rest of dbfork (engine, runner, CLI) calls these and never `libc`.
//! dbfork runs on Unix; what only Linux has (the parent-death signal,
//! FICLONE, tmpfs detection, `getrandom`) is chosen by `cfg` here, with a
//! fallback elsewhere.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A signal number.
pub type Signal = libc::c_int;
pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// Flags for `OpenOptionsExt::custom_flags`: never follow a link, close on exec.
pub const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;
pub const O_CLOEXEC: i32 = libc::O_CLOEXEC;
/// The error of opening a link with [`O_NOFOLLOW`].
pub const ELOOP: i32 = libc::ELOOP;

fn pid_of(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|p| *p > 1)
}

/// Sends `signal` to process `pid` (not to pid 0 or 1); whether it was sent.
pub fn signal(pid: u32, signal: Signal) -> bool {
    let Some(pid) = pid_of(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends `signal` to the process group led by `pid`; whether it was sent.
pub fn signal_group(pid: u32, signal: Signal) -> bool {
    let Some(pid) = pid_of(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a negative pid addresses the group; no memory involved.
    unsafe { libc::kill(-pid, signal) == 0 }
}

/// Whether `pid` leads a process group of its own.
pub fn leads_group(pid: u32) -> bool {
    let Some(pid) = pid_of(pid) else {
        return false;
    };
    // SAFETY: getpgid(2) has no memory-safety preconditions.
    unsafe { libc::getpgid(pid) == pid }
}

/// Whether no process `pid` exists (signal 0 answered "no such process").
pub fn is_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only probes whether the process exists.
    let probe = unsafe { libc::kill(pid, 0) };
    probe != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() }
}

/// The host's name, if it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Fills `bytes` from the kernel's random source; whether it could.
#[cfg(target_os = "linux")]
pub fn random_bytes(bytes: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    got == bytes.len() as isize
}

#[cfg(not(target_os = "linux"))]
pub fn random_bytes(bytes: &mut [u8]) -> bool {
    use std::io::Read;
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .is_ok()
}

/// Makes `to` share `from`'s blocks (a reflink); whether the filesystem could.
#[cfg(target_os = "linux")]
pub fn reflink(from: &File, to: &File) -> bool {
    // SAFETY: both descriptors are open for the duration of the call.
    unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub fn reflink(_from: &File, _to: &File) -> bool {
    false
}

/// Takes an exclusive lock on `file` without waiting; whether it got it.
/// The lock goes when the file is closed.
pub fn try_lock_exclusive(file: &File) -> bool {
    // SAFETY: the descriptor is open for the duration of the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Makes the FIFO `path` (mode 0600), which must not exist.
pub fn make_fifo(path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: a valid C string; mkfifo(3) creates the node or fails.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what is there from a (non-blocking) descriptor into `buf`: the
/// bytes read, 0 at the end or when nothing is there.
pub fn read_now(fd: &impl AsRawFd, buf: &mut [u8]) -> usize {
    // SAFETY: reads into a buffer of the length given, from a descriptor
    // the caller keeps open for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Whether this process may create files in `dir` (write and search).
pub fn can_write_in(dir: &Path) -> bool {
    let Ok(path) = c_path(dir) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Whether `dir` is on a tmpfs (memory).
#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)]
pub fn is_tmpfs(dir: &Path) -> bool {
    let Ok(path) = c_path(dir) else {
        return false;
    };
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `buf` is valid for one statfs.
    if unsafe { libc::statfs(path.as_ptr(), buf.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled `buf`.
    let buf = unsafe { buf.assume_init() };
    buf.f_type as i64 == libc::TMPFS_MAGIC as i64
}

#[cfg(not(target_os = "linux"))]
pub fn is_tmpfs(_dir: &Path) -> bool {
    false
}

/// A System V shared memory segment, as [`shm_segment`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub key: i64,
    /// How many processes have it attached.
    pub attached: u64,
}

/// The shared memory segment `id`, if there is one (and this platform can tell).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(clippy::unnecessary_cast)]
pub fn shm_segment(id: i32) -> Option<Segment> {
    let mut stat = std::mem::MaybeUninit::<libc::shmid_ds>::zeroed();
    // SAFETY: `stat` is valid for one shmid_ds, which IPC_STAT fills.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: shmctl succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(Segment {
        key: stat.shm_perm.__key as i64,
        attached: stat.shm_nattch as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn shm_segment(_id: i32) -> Option<Segment> {
    None
}

/// Removes the shared memory segment `id`.
pub fn remove_shm(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// For a child between fork and exec: it is killed when its parent
/// (`parent`) dies, even by SIGKILL (Linux; elsewhere only checked now),
/// and exits at once if the parent is already gone. Async-signal-safe.
pub fn die_with_parent(parent: u32) {
    // SAFETY: prctl, getppid and _exit are async-signal-safe and touch no
    // memory of the process.
    unsafe {
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() as u32 != parent {
            libc::_exit(1);
        }
    }
}

/// The conventional name of a signal that ends processes (`SIGSEGV`).
pub fn signal_name(sig: Signal) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "signal",
    }
}

/// SIGPIPE back to its default action (Rust ignores it): a closed stdout
/// ends the process quietly, as a Unix filter does. Call before any thread.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is always a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Installs `handler` for SIGINT, SIGTERM and SIGHUP. The handler must be
/// async-signal-safe (atomics only).
pub fn on_stop_signals(handler: extern "C" fn(Signal)) {
    let handler = handler as libc::sighandler_t;
    // SAFETY: the caller's handler is async-signal-safe, as documented.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}
