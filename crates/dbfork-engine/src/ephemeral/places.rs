//! Where a server lives and what runs it: the directory (tmpfs first), the
//! unprivileged user when dbfork is root, the programs and where they are.

use super::*;

/// Where ephemeral directories may live, in order of preference.
pub(super) fn tmp_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/dev/shm")];
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if xdg.is_absolute() {
            roots.push(xdg);
        }
    }
    roots.push(std::env::temp_dir());
    roots.push(PathBuf::from("/tmp"));
    dedup(roots)
}

/// The directory to make a new server's directory in: tmpfs where there is one.
pub(super) fn pick_root(other_user: bool) -> PathBuf {
    // The longest name: prefix, slug, pid, random, separators.
    let name_len = DIR_PREFIX.len() + "postgres".len() + 10 + 8 + 2;
    let fits = |root: &Path| {
        root.as_os_str().len() + 1 + name_len + "/.s.PGSQL.5432".len() <= MAX_SOCKET_PATH
    };
    let shm = Path::new("/dev/shm");
    if crate::sys::is_tmpfs(shm) && usable(shm, other_user) && fits(shm) {
        return shm.to_path_buf();
    }
    // XDG_RUNTIME_DIR is private to its user: useless for a server run as another one.
    if !other_user {
        if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            if xdg.is_absolute() && usable(&xdg, false) && fits(&xdg) {
                return xdg;
            }
        }
    }
    let tmp = std::env::temp_dir();
    if usable(&tmp, other_user) && fits(&tmp) {
        return tmp;
    }
    PathBuf::from("/tmp")
}

/// A writable directory; traversable by everyone when the server runs as another user.
pub(super) fn usable(dir: &Path, other_user: bool) -> bool {
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let writable = crate::sys::can_write_in(dir);
    meta.is_dir() && writable && (!other_user || meta.mode() & 0o001 != 0)
}

/// Creates `dbfork-ephemeral-<kind>-<pid>-<random>` (mode 0700), owned by
/// `run_as` when given.
pub(super) fn make_dir(flavor: Flavor, run_as: Option<&RunAs>) -> Result<PathBuf> {
    let root = pick_root(run_as.is_some());
    let mut last = None;
    for _ in 0..16 {
        let dir = root.join(format!(
            "{DIR_PREFIX}{}-{}-{}",
            flavor.slug(),
            std::process::id(),
            random_suffix()
        ));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(user) = run_as {
                    if let Err(e) = std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)) {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(Error::io(format!(
                            "giving {} to the user {}",
                            dir.display(),
                            user.name
                        ))(e));
                    }
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()))(e)),
        }
    }
    Err(Error::io(format!(
        "creating an ephemeral server directory in {}",
        root.display()
    ))(
        last.unwrap_or_else(|| std::io::Error::other("no free name")),
    ))
}

pub(super) fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hasher.finalize().to_hex()[..8].to_string()
}

/// The user to run the server as: None unless dbfork runs as root; then the
/// flavor's system user if it exists, else `nobody`.
pub(super) fn run_as(flavor: Flavor) -> Option<RunAs> {
    if crate::sys::euid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    [flavor.system_user(), "nobody"]
        .into_iter()
        .find_map(|name| passwd_entry(&passwd, name))
        .or(Some(RunAs {
            name: "nobody".to_string(),
            uid: 65534,
            gid: 65534,
        }))
}

pub(super) fn passwd_entry(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid: u32 = fields.next()?.parse().ok()?;
        let gid: u32 = fields.next()?.parse().ok()?;
        (uid != 0).then(|| RunAs {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

/// Finds the programs: in `bindirs` when given, else in the flavor's
/// environment variable's directories when set (then only there), else on
/// PATH and the usual places.
pub(super) async fn find_programs(
    flavor: Flavor,
    bindirs: Option<Vec<PathBuf>>,
) -> Result<Programs> {
    let from_env = || {
        std::env::var_os(flavor.bindir_var())
            .filter(|v| !v.is_empty())
            .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
    };
    let (mut searched, exclusive) = match bindirs.or_else(from_env) {
        Some(dirs) => (dedup(dirs), true),
        None => (default_dirs(flavor), false),
    };
    let mut found = lookup(flavor, &searched);
    if found.is_err() && !exclusive && flavor == Flavor::Postgres {
        let mut more = searched.clone();
        more.extend(pg_config_bindir().await);
        more.extend(debian_pg_dirs(Path::new("/usr/lib/postgresql")));
        searched = dedup(more);
        found = lookup(flavor, &searched);
    }
    found.map_err(|program| Error::MissingBinary {
        what: format!("starting an ephemeral {} server", flavor.label()),
        program: program.to_string(),
        searched: searched
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        package: flavor.package().to_string(),
    })
}

/// PATH, then (MariaDB) `/usr/sbin` and `/usr/bin`.
pub(super) fn default_dirs(flavor: Flavor) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    if flavor == Flavor::MariaDb {
        dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    }
    dedup(dirs)
}

/// The programs in `dirs`, or the name of the one missing. PostgreSQL's two
/// must come from the same directory (the same version).
pub(super) fn lookup(
    flavor: Flavor,
    dirs: &[PathBuf],
) -> std::result::Result<Programs, &'static str> {
    let find = |names: &[&str], dirs: &[PathBuf]| {
        dirs.iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| is_executable(p))
    };
    match flavor {
        Flavor::Postgres => {
            let mut any_init = false;
            for dir in dirs {
                let init = find(flavor.init_names(), std::slice::from_ref(dir));
                let server = find(flavor.server_names(), std::slice::from_ref(dir));
                any_init |= init.is_some();
                if let (Some(init), Some(server)) = (init, server) {
                    return Ok(Programs { init, server });
                }
            }
            Err(if any_init { "postgres" } else { "initdb" })
        }
        Flavor::MariaDb => {
            let init = find(flavor.init_names(), dirs).ok_or("mariadb-install-db")?;
            let server = find(flavor.server_names(), dirs).ok_or("mariadbd")?;
            Ok(Programs { init, server })
        }
    }
}

pub(super) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

pub(super) async fn pg_config_bindir() -> Option<PathBuf> {
    let mut cmd = Command::new("pg_config");
    cmd.arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .ok()?
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.is_absolute()).then_some(dir)
}

/// `<root>/<version>/bin`, newest version first (Debian's layout).
pub(crate) fn debian_pg_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let key = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

pub(super) fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}
