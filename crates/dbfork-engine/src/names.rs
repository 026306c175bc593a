//! Names of what dbfork creates. Every name starts with [`PREFIX`], fits the
//! identifier limits of every backend (63 bytes on PostgreSQL, 64 on MySQL),
//! and carries enough to find its owner: a template its fingerprint, a clone
//! its run id and slot.

/// The prefix of every database dbfork creates.
pub const PREFIX: &str = "dbfork_";

/// The mark dbfork puts on every MariaDB database it creates (the schema's
/// comment; PostgreSQL's and SQLite's are below), checked before any drop:
/// a registry row can be forged, the mark only by whoever owns the
/// database.
pub const MARK: &str = "made by dbfork, dropped by dbfork";

/// PostgreSQL's mark: the database's connection limit, set in the `CREATE
/// DATABASE` itself (a comment would take a second statement, and a dbfork
/// killed between the two would leave a clone no command could collect).
/// Effectively no limit; only the database's owner or a superuser can set it.
pub const PG_CONNECTION_LIMIT_MARK: i32 = 6_578_790;

/// SQLite's mark: the file's application id ("dbfk").
pub const SQLITE_APPLICATION_ID: i32 = 0x6462_666b;

/// How many hex digits of the fingerprint a template's name carries.
const FINGERPRINT_DIGITS: usize = 16;
/// How many hex digits of the registry's hash a template's name carries.
const SCOPE_DIGITS: usize = 6;

/// A template's name: its fingerprint, and a short hash of the registry it is
/// recorded in (`scope`: the maintenance database). Database names are global
/// on a server while registries are per maintenance database, so two projects
/// with the same setup but different registries must not claim one name.
pub fn template_name(fingerprint: &str, scope: &str) -> String {
    let short = &fingerprint[..fingerprint.len().min(FINGERPRINT_DIGITS)];
    let scope = blake3::hash(scope.as_bytes()).to_hex();
    format!("{PREFIX}tpl_{short}_{}", &scope[..SCOPE_DIGITS])
}

pub fn clone_name(run_id: &str, index: usize) -> String {
    format!("{PREFIX}{run_id}_{index}")
}

/// The clone of a slot of `dbfork run`; a replacement (generation > 0) gets a new name.
pub fn slot_clone_name(run_id: &str, slot: usize, generation: usize) -> String {
    match generation {
        0 => clone_name(run_id, slot),
        g => format!("{}_{g}", clone_name(run_id, slot)),
    }
}

/// The clone of extra alias `index` (`dbfork run --alias`) beside the slot
/// clone `slot_clone`: `<slot clone>_x<index>`.
pub fn alias_clone_name(slot_clone: &str, index: usize) -> String {
    format!("{slot_clone}_x{index}")
}

/// The `n`th fresh clone of a run (`dbfork run --fresh-transactional`).
pub fn fresh_clone_name(run_id: &str, n: usize) -> String {
    format!("{PREFIX}{run_id}_f{n}")
}

/// A run id: 10 hex digits, unique per process start (pid, time, host).
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&nanos.to_le_bytes());
    h.update(crate::process::host_name().as_bytes());
    h.finalize().to_hex()[..10].to_string()
}

/// Whether `name` has the shape of a name dbfork makes: a template
/// (`dbfork_tpl_<16 hex>_<6 hex>`), a clone of a run or of `dbfork db clone`
/// (`dbfork_<10 hex>_<n>`, a replacement's `_<generation>`, an alias's
/// `_x<i>`), or a fresh clone (`dbfork_<10 hex>_f<n>`). Every path that drops
/// or deletes checks this besides the registry: a registry row naming anything
/// else was not written by dbfork and is never acted on.
pub fn is_dbfork_shape(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let number = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    if let Some(template) = rest.strip_prefix("tpl_") {
        return matches!(template.split_once('_'), Some((fp, scope)) if hex(fp, FINGERPRINT_DIGITS) && hex(scope, SCOPE_DIGITS));
    }
    let mut parts = rest.split('_');
    let (Some(run), Some(first)) = (parts.next(), parts.next()) else {
        return false;
    };
    if !hex(run, 10) {
        return false;
    }
    if let Some(n) = first.strip_prefix('f') {
        return number(n) && parts.next().is_none();
    }
    if !number(first) {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    match rest.as_slice() {
        [] => true,
        [generation] if number(generation) => true,
        [alias] => alias.strip_prefix('x').is_some_and(number),
        [generation, alias] => number(generation) && alias.strip_prefix('x').is_some_and(number),
        _ => false,
    }
}

/// Whether `name` is safe to splice into SQL as a quoted identifier and as a
/// file name: dbfork only ever makes names of `[a-z0-9_]`.
pub fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shapes_dbfork_makes() {
        let fp = "0123456789abcdef".repeat(4);
        let run = new_run_id();
        let slot = slot_clone_name(&run, 3, 0);
        for ours in [
            template_name(&fp, "postgres"),
            slot.clone(),
            slot_clone_name(&run, 12, 2),
            alias_clone_name(&slot, 0),
            alias_clone_name(&slot_clone_name(&run, 1, 4), 11),
            fresh_clone_name(&run, 7),
            clone_name(&run, 0),
        ] {
            assert!(is_dbfork_shape(&ours), "{ours}");
            assert!(is_plain(&ours), "{ours}");
        }
        for foreign in [
            "relrev_victim",
            "dbfork_",
            "dbfork_victim",
            "dbfork_tpl_victim",
            "dbfork_0123456789_1; DROP DATABASE x",
            "dbfork_0123456789_1\"",
            "dbfork_0123456789_1`",
            "dbfork_0123456789_../../victim",
            "/etc/passwd",
            "../dbfork_0123456789_1",
            "dbfork_0123456789_1_2_x3_4",
            "dbfork_0123456789_x1",
            "dbfork_0123456789ab_1",
            "dbfork_ABCDEF1234_1",
            "dbfork_0123456789_1é",
            "dbfork_tpl_0123456789abcdef_12345",
        ] {
            assert!(!is_dbfork_shape(foreign), "{foreign}");
        }
    }

    #[test]
    fn names_fit_and_are_plain() {
        let fp = "a".repeat(64);
        let t = template_name(&fp, "postgres");
        assert_ne!(t, template_name(&fp, "other_registry"));
        assert!(t.len() <= 63 && is_plain(&t) && t.starts_with(PREFIX));
        let c = clone_name(&new_run_id(), 4095);
        assert!(
            c.len() <= 63 && is_plain(&c) && c.starts_with(PREFIX),
            "{c}"
        );
        assert_ne!(new_run_id(), new_run_id());
        assert!(!is_plain("x; drop table y"));
    }
}
