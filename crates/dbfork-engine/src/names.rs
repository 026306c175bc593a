//! Names of what dbfork creates. Every name starts with [`PREFIX`], fits the
//! identifier limits of every backend (63 bytes on PostgreSQL, 64 on MySQL),
//! and carries enough to find its owner: a template its fingerprint, a clone
//! its run id and slot.

/// The prefix of every database dbfork creates.
pub const PREFIX: &str = "dbfork_";

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
