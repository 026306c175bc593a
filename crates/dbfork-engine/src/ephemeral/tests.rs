//! The ephemeral servers' tests: real PostgreSQL and MariaDB started from
//! the installed binaries, stale directories, missing programs.

use super::*;

/// Runs a client program with a deadline; returns its trimmed stdout.
async fn client(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the client finishes in time")
        .expect("the client runs");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn psql(server: &EphemeralServer, sql: &str) -> String {
    let dir = server.dir().to_str().unwrap().to_string();
    client(
        "psql",
        &[
            "-X", "-h", &dir, "-p", "5432", "-U", "postgres", "-d", "postgres", "-Atc", sql,
        ],
    )
    .await
}

async fn mariadb(server: &EphemeralServer, sql: &str) -> String {
    let socket = format!("--socket={}", server.dir().join("mysqld.sock").display());
    client(
        "mariadb",
        &["--no-defaults", &socket, "-uroot", "-N", "-B", "-e", sql],
    )
    .await
}

#[tokio::test]
async fn ephemeral_postgres_starts_answers_and_stops() {
    let began = Instant::now();
    let server = EphemeralServer::start(Kind::Postgres).await.unwrap();
    let started = began.elapsed();
    let dir = server.dir().to_path_buf();
    assert!(dir.join("owner").is_file());
    assert!(dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("dbfork-ephemeral-postgres-"));
    let url = server.url().to_url_with_password();
    assert_eq!(
        url,
        format!(
            "postgres://postgres@/postgres?host={}&port=5432",
            dir.display()
        )
    );
    assert_eq!(DbUrl::parse(&url).unwrap(), *server.url());
    assert_eq!(psql(&server, "select 1").await, "1");
    assert_eq!(psql(&server, "show fsync").await, "off");
    assert_eq!(psql(&server, "show listen_addresses").await, "");
    let began = Instant::now();
    server.stop().await.unwrap();
    dbfork_meta::say!("postgres: start {started:?}, stop {:?}", began.elapsed());
    assert!(!dir.exists(), "{} is gone", dir.display());
}

#[tokio::test]
async fn ephemeral_mariadb_starts_answers_and_stops() {
    let began = Instant::now();
    let server = EphemeralServer::start(Kind::Mysql).await.unwrap();
    let started = began.elapsed();
    let dir = server.dir().to_path_buf();
    assert!(dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("dbfork-ephemeral-mariadb-"));
    assert_eq!(
        server.url().to_url_with_password(),
        format!("mysql://root@/mysql?socket={}/mysqld.sock", dir.display())
    );
    assert_eq!(mariadb(&server, "select 1").await, "1");
    assert_eq!(
        mariadb(&server, "select @@innodb_flush_log_at_trx_commit").await,
        "0"
    );
    assert_eq!(
        mariadb(&server, "select @@skip_networking, @@log_bin").await,
        "1\t0"
    );
    assert_eq!(
        mariadb(&server, "select @@character_set_server").await,
        "utf8mb4"
    );
    let began = Instant::now();
    server.stop().await.unwrap();
    dbfork_meta::say!("mariadb: start {started:?}, stop {:?}", began.elapsed());
    assert!(!dir.exists(), "{} is gone", dir.display());
}

#[tokio::test]
async fn ephemeral_drop_without_stop_cleans_up() {
    for kind in [Kind::Postgres, Kind::Mysql] {
        let server = EphemeralServer::start(kind).await.unwrap();
        let dir = server.dir().to_path_buf();
        let pid = server.server_pid().unwrap();
        let owner = Owner::of_pid(pid);
        assert!(is_alive(pid, owner.start));
        drop(server);
        assert!(!dir.exists(), "{} is gone", dir.display());
        assert!(
            !is_alive(pid, owner.start),
            "the {kind:?} server {pid} is dead"
        );
    }
}

#[tokio::test]
async fn ephemeral_collect_stale_stops_an_orphaned_server() {
    let server = EphemeralServer::start(Kind::Postgres).await.unwrap();
    let dir = server.dir().to_path_buf();
    let pid = server.server_pid().unwrap();
    let start = Owner::of_pid(pid).start;
    // Its owner "dies": the server now belongs to a dead process.
    let mut dead = spawn_sleeper();
    let dead_owner = Owner::of_pid(dead.id());
    dead.kill().unwrap();
    dead.wait().unwrap();
    write_owner(&dir.join("owner"), &dead_owner).unwrap();
    let removed = tokio::task::spawn_blocking(collect_stale).await.unwrap();
    assert!(removed.contains(&dir), "{removed:?}");
    assert!(!dir.exists());
    assert!(
        !is_alive(pid, start),
        "the orphaned server {pid} was killed"
    );
    drop(server);
}

fn spawn_sleeper() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap()
}

fn fake_dir(root: &Path, name: &str, owner: Option<&Owner>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("data"), "x").unwrap();
    if let Some(owner) = owner {
        write_owner(&dir.join("owner"), owner).unwrap();
    }
    dir
}

#[test]
fn ephemeral_collect_stale_removes_dead_owners_only() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    let mut dead = spawn_sleeper();
    let dead_owner = Owner::of_pid(dead.id());
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert!(!is_alive(dead_owner.pid, dead_owner.start));
    let live = spawn_sleeper();
    let live_owner = Owner::of_pid(live.id());

    let stale = fake_dir(
        root.path(),
        "dbfork-ephemeral-postgres-1-aaaaaaaa",
        Some(&dead_owner),
    );
    // A "server" left running: a process group whose leader mentions the directory.
    let mut server = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 60; : {}", stale.display()))
        .process_group(0)
        .spawn()
        .unwrap();
    let server_owner = Owner::of_pid(server.id());
    write_owner(&stale.join("server"), &server_owner).unwrap();
    // A dead owner whose recorded server pid is some unrelated process: not killed.
    let bystander = spawn_sleeper();
    let stale2 = fake_dir(
        root.path(),
        "dbfork-ephemeral-mariadb-2-bbbbbbbb",
        Some(&dead_owner),
    );
    write_owner(&stale2.join("server"), &Owner::of_pid(bystander.id())).unwrap();

    let kept_live = fake_dir(
        root.path(),
        "dbfork-ephemeral-postgres-3-cccccccc",
        Some(&live_owner),
    );
    let kept_new = fake_dir(root.path(), "dbfork-ephemeral-postgres-4-dddddddd", None);
    let other_host = Owner {
        host: "some-other-host".to_string(),
        ..dead_owner.clone()
    };
    let kept_foreign = fake_dir(
        root.path(),
        "dbfork-ephemeral-postgres-5-eeeeeeee",
        Some(&other_host),
    );
    let unrelated = fake_dir(root.path(), "not-dbfork-ephemeral-x", Some(&dead_owner));

    let mut removed = collect_stale_in(&[root.path().to_path_buf()]);
    removed.sort();
    assert_eq!(removed, vec![stale2.clone(), stale.clone()]);
    assert!(!stale.exists() && !stale2.exists());
    for kept in [&kept_live, &kept_new, &kept_foreign, &unrelated] {
        assert!(kept.exists(), "{} is kept", kept.display());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the stale server was killed");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    let bystander_owner = Owner::of_pid(bystander.id());
    assert!(
        is_alive(bystander_owner.pid, bystander_owner.start),
        "an unrelated pid is not killed"
    );

    for mut child in [live, bystander] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        collect_stale_in(&[root.path().to_path_buf()]),
        vec![kept_live]
    );
}

#[tokio::test]
async fn ephemeral_missing_binaries_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let dirs = Some(vec![empty.path().to_path_buf()]);
    for (kind, program, package) in [
        (Kind::Postgres, "initdb", "postgresql"),
        (Kind::Mysql, "mariadb-install-db", "mariadb-server"),
    ] {
        match EphemeralServer::start_with(kind, dirs.clone(), None).await {
            Err(Error::MissingBinary {
                program: p,
                package: pkg,
                searched,
                what,
            }) => {
                assert_eq!((p.as_str(), pkg.as_str()), (program, package));
                assert_eq!(searched, empty.path().display().to_string());
                assert!(what.starts_with("starting an ephemeral"), "{what}");
            }
            other => panic!("expected MissingBinary, got {other:?}"),
        }
    }
    // initdb without postgres next to it: the server is what is missing.
    let fake = empty.path().join("initdb");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = find_programs(Flavor::Postgres, dirs).await.unwrap_err();
    assert!(
        matches!(&err, Error::MissingBinary { program, .. } if program == "postgres"),
        "{err}"
    );
    assert!(
        err.to_string().contains("apt-get install postgresql"),
        "{err}"
    );
}

#[tokio::test]
async fn ephemeral_failures_show_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    // As root the programs run as another user: let it in.
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = |name: &str, body: &str| {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("initdb", "echo 'initdb: boom' >&2; exit 3");
    script("postgres", "echo 'FATAL: nope' >&2; exit 1");
    let dirs = Some(vec![bin.path().to_path_buf()]);
    let err = EphemeralServer::start_with(Kind::Postgres, dirs.clone(), None)
        .await
        .unwrap_err();
    match &err {
        Error::Ephemeral { kind, cause } => {
            assert_eq!(*kind, "PostgreSQL");
            assert!(
                cause.contains("`initdb` failed") && cause.contains("initdb: boom"),
                "{cause}"
            );
        }
        other => panic!("expected Ephemeral, got {other:?}"),
    }
    script("initdb", "exit 0");
    let err = EphemeralServer::start_with(Kind::Postgres, dirs, None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`postgres` exited") && text.contains("FATAL: nope"),
        "{text}"
    );
}

#[test]
fn ephemeral_helpers() {
    let root = tempfile::tempdir().unwrap();
    for v in ["9.6", "15", "13", "main"] {
        std::fs::create_dir(root.path().join(v)).unwrap();
    }
    let dirs = debian_pg_dirs(root.path());
    let names: Vec<_> = dirs
        .iter()
        .map(|d| {
            d.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["15", "13", "9.6"]);
    let passwd =
        "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n";
    assert_eq!(
        passwd_entry(passwd, "postgres"),
        Some(RunAs {
            name: "postgres".to_string(),
            uid: 101,
            gid: 104
        })
    );
    assert_eq!(passwd_entry(passwd, "root"), None, "never run as root");
    assert_eq!(passwd_entry(passwd, "mysql"), None);
    assert!(Flavor::of(Kind::Sqlite).is_err());
    assert_ne!(random_suffix(), random_suffix());
    let tail_file = root.path().join("log");
    std::fs::write(
        &tail_file,
        (0..100).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    assert!(tail(&tail_file).starts_with("line 75\n") && tail(&tail_file).ends_with("line 99"));
}
