//! What dbfork knows of a Django project, from its controller's report: the
//! template's recipe (the facts and files that decide it), the server the
//! tests' settings name, whether `--db` fits them, and which other aliases
//! need clones of their own.

use std::path::{Path, PathBuf};

use dbfork_engine::fingerprint::Recipe;
use dbfork_engine::{DbUrl, Kind};
use dbfork_protocol::{AliasSettings, DjangoReport};

use crate::error::RunError;

/// The template's recipe: built by the test process with Django's own test
/// database setup; user `--input` patterns still count.
pub fn recipe(django: &DjangoReport, inputs: &[String]) -> Recipe {
    let how = django
        .facts
        .get("template setup")
        .map(String::as_str)
        .unwrap_or("create_test_db");
    Recipe {
        setup: format!("django {how}: {}", django.settings_module),
        inputs: inputs.to_vec(),
        files: django
            .inputs
            .iter()
            .map(|f| (f.name.clone(), PathBuf::from(&f.path)))
            .collect(),
        facts: django.facts.clone(),
        dir: None,
    }
}

/// The backend kind of a Django `connection.vendor`, if dbfork has one.
fn kind_of(vendor: &str) -> Option<Kind> {
    match vendor {
        "postgresql" => Some(Kind::Postgres),
        "mysql" => Some(Kind::Mysql),
        "sqlite" => Some(Kind::Sqlite),
        _ => None,
    }
}

fn default_alias(django: &DjangoReport) -> Result<&AliasSettings, RunError> {
    django.databases.get("default").ok_or_else(|| {
        RunError::Usage(
            "the Django settings have no `default` database in DATABASES; dbfork clones the template of `default` for every worker, so the tests need one".to_string(),
        )
    })
}

/// The server the tests' settings name for `default`, as dbfork's URL
/// (`None` for SQLite: dbfork's embedded default is used). Used when `--db`
/// is not given: the template and the clones go where the tests' own test
/// database would have gone.
pub fn server_url(django: &DjangoReport) -> Result<Option<DbUrl>, RunError> {
    let default = default_alias(django)?;
    let kind = kind_of(&default.vendor).ok_or_else(|| unsupported(default))?;
    if kind == Kind::Sqlite {
        return Ok(None);
    }
    let text = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let (host, socket) = match default.host.as_str() {
        h if h.starts_with('/') => (None, Some(PathBuf::from(h))),
        // libpq's and MySQL's own default without a host: the local socket.
        "" if kind == Kind::Postgres => (None, Some(PathBuf::from("/var/run/postgresql"))),
        "" | "localhost" if kind == Kind::Mysql => (Some("localhost".to_string()), None),
        h => (Some(h.to_string()), None),
    };
    let port = match default.port.trim() {
        "" => None,
        p => Some(p.parse::<u16>().map_err(|_| {
            RunError::Usage(format!(
                "the Django settings give `default` the PORT `{p}`, which is not a port number; fix the settings or pass --db"
            ))
        })?),
    };
    Ok(Some(DbUrl {
        kind,
        user: text(&default.user),
        password: text(&default.password),
        host,
        port,
        socket,
        // PostgreSQL: the database Django itself connects to for creating
        // test databases; MySQL: none, so dbfork keeps its registry in a
        // schema of its own.
        database: (kind == Kind::Postgres).then(|| "postgres".to_string()),
        params: Vec::new(),
    }))
}

/// Why a `--setup` command cannot be what builds a Django project's
/// template, before it runs: it runs Django (`manage.py`, `django-admin`,
/// `migrate`) and the project's settings do not take their `default`
/// database from `DATABASE_URL`, the variable through which dbfork points
/// the setup at the template. Such a setup would migrate the database the
/// settings name (the project's own) and leave the template empty. `url` is
/// the `DATABASE_URL` the controller was configured with, if any.
pub fn setup_misses_template(
    setup: &str,
    django: &DjangoReport,
    url: Option<&str>,
) -> Option<String> {
    let runs_django = ["manage.py", "django-admin", "migrate"]
        .iter()
        .any(|word| setup.contains(word));
    let default = django.databases.get("default")?;
    if !runs_django || follows_url(default, url) {
        return None;
    }
    let settings = match django.settings_module.as_str() {
        "" => "settings configured in code".to_string(),
        module => module.to_string(),
    };
    let named = if default.name.is_empty() {
        format!("`{}`", default.engine)
    } else {
        format!("`{}` ({})", default.name, default.vendor)
    };
    let reads = if url.is_some() {
        "do not take their `default` database from DATABASE_URL"
    } else {
        "may not take their `default` database from DATABASE_URL (without --db dbfork cannot check that they do)"
    };
    Some(format!(
        "--setup `{setup}` may not build the template: this Django project's settings ({settings}) {reads}; they name {named}, so the command would run against that database, the project's own, and leave dbfork's template empty. Leave --setup out: for a Django project dbfork builds the template itself, with the tests' own database setup (the migrations as pytest-django or manage.py test run them). Nothing was run."
    ))
}

/// Whether the `default` alias is the database `url` names (its settings
/// read `DATABASE_URL`).
fn follows_url(default: &AliasSettings, url: Option<&str>) -> bool {
    let Some(named) = url.and_then(|u| DbUrl::parse(u).ok()) else {
        return false;
    };
    let database = named.database.unwrap_or_default();
    !database.is_empty()
        && (default.name == database
            || Path::new(&default.name)
                .canonicalize()
                .ok()
                .zip(Path::new(&database).canonicalize().ok())
                .is_some_and(|(a, b)| a == b))
}

fn unsupported(alias: &AliasSettings) -> RunError {
    RunError::Usage(format!(
        "the Django settings use the database engine `{}` ({}), which dbfork does not clone; dbfork supports PostgreSQL, MySQL/MariaDB and SQLite",
        alias.engine, alias.vendor
    ))
}

/// Checks that the server dbfork uses is of the kind the tests' settings
/// connect to: a PostgreSQL project cannot run on clones in SQLite files.
pub fn check_backend(django: &DjangoReport, backend: Kind) -> Result<(), RunError> {
    let default = default_alias(django)?;
    let wanted = kind_of(&default.vendor).ok_or_else(|| unsupported(default))?;
    if wanted == backend {
        return Ok(());
    }
    Err(RunError::Usage(format!(
        "the tests' settings use {} for the database `default` (ENGINE `{}`), but dbfork's database is {}: give --db a {} server (e.g. {}), or leave --db out to use the server the settings name",
        wanted.name(),
        default.engine,
        backend.name(),
        wanted.name(),
        match wanted {
            Kind::Postgres => "postgres://user@127.0.0.1:5432/postgres",
            Kind::Mysql => "mysql://root@127.0.0.1:3306/mysql",
            Kind::Sqlite => "sqlite://.dbfork/sqlite/main.sqlite3",
        }
    )))
}

/// The aliases besides `default` that need clones of their own, as Django
/// makes a test database for each: not mirrors, on the same kind of server,
/// and not the same database as one already counted (Django's test database
/// signature). `given` are the aliases asked for with `--alias`.
pub fn other_aliases(django: &DjangoReport, given: &[String]) -> Vec<String> {
    let Some(default) = django.databases.get("default") else {
        return Vec::new();
    };
    let mut signatures = vec![&default.signature];
    signatures.extend(
        given
            .iter()
            .filter_map(|a| django.databases.get(a))
            .map(|s| &s.signature),
    );
    let mut found = Vec::new();
    for (alias, settings) in &django.databases {
        let counted = alias == "default" || given.contains(alias);
        if counted
            || settings.mirror.is_some()
            || settings.vendor != default.vendor
            || signatures.contains(&&settings.signature)
        {
            continue;
        }
        signatures.push(&settings.signature);
        found.push(alias.clone());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(vendor: &str, host: &str, signature: &str) -> AliasSettings {
        AliasSettings {
            vendor: vendor.into(),
            engine: format!("django.db.backends.{vendor}"),
            host: host.into(),
            port: "5433".into(),
            user: "app".into(),
            password: "p@ss".into(),
            signature: signature.into(),
            ..AliasSettings::default()
        }
    }

    fn report(aliases: &[(&str, AliasSettings)]) -> DjangoReport {
        DjangoReport {
            databases: aliases
                .iter()
                .map(|(a, s)| (a.to_string(), s.clone()))
                .collect(),
            ..DjangoReport::default()
        }
    }

    #[test]
    fn the_server_comes_from_the_settings() {
        let django = report(&[("default", alias("postgresql", "db.local", "a"))]);
        let url = server_url(&django).unwrap().unwrap();
        assert_eq!(
            url.to_url_with_password(),
            "postgres://app:p%40ss@db.local:5433/postgres"
        );
        let socket = report(&[("default", alias("postgresql", "", "a"))]);
        assert_eq!(
            server_url(&socket)
                .unwrap()
                .unwrap()
                .to_url_without_password(),
            "postgres://app@/postgres?host=/var/run/postgresql&port=5433"
        );
        let sqlite = report(&[("default", alias("sqlite", "", "a"))]);
        assert!(server_url(&sqlite).unwrap().is_none());
        let oracle = report(&[("default", alias("oracle", "", "a"))]);
        assert!(server_url(&oracle)
            .unwrap_err()
            .to_string()
            .contains("does not clone"));
    }

    #[test]
    fn the_backend_must_fit_the_settings() {
        let django = report(&[("default", alias("postgresql", "h", "a"))]);
        assert!(check_backend(&django, Kind::Postgres).is_ok());
        let e = check_backend(&django, Kind::Sqlite)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("use PostgreSQL") && e.contains("dbfork's database is SQLite"),
            "{e}"
        );
    }

    #[test]
    fn other_aliases_get_clones_unless_mirrors_or_the_same_database() {
        let mut mirror = alias("postgresql", "h", "m");
        mirror.mirror = Some("default".into());
        let django = report(&[
            ("default", alias("postgresql", "h", "a")),
            ("other", alias("postgresql", "h", "b")),
            ("same", alias("postgresql", "h", "a")),
            ("replica", mirror),
            ("legacy", alias("sqlite", "", "c")),
            ("third", alias("postgresql", "h", "d")),
        ]);
        assert_eq!(other_aliases(&django, &[]), ["other", "third"]);
        assert_eq!(other_aliases(&django, &["third".to_string()]), ["other"]);
    }
}
