//! The registry: one row per database dbfork created, kept in the server
//! itself (PostgreSQL: `dbfork.registry` in the maintenance database; MySQL:
//! `dbfork_registry` in the maintenance database; SQLite: a registry file
//! beside the databases). A row is written *before* its database is created
//! and removed only after it is dropped, so a crash at any point leaves a row
//! that garbage collection can follow. Nothing without a row is ever dropped.

use serde::Serialize;

use crate::process::{self, Owner};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Template,
    Clone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made: the database may be missing or half-built.
    Building,
    /// Complete and usable.
    Ready,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Template => "template",
            EntryKind::Clone => "clone",
        }
    }
    pub fn parse(s: &str) -> EntryKind {
        if s == "template" {
            EntryKind::Template
        } else {
            EntryKind::Clone
        }
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Building => "building",
            State::Ready => "ready",
        }
    }
    pub fn parse(s: &str) -> State {
        if s == "ready" {
            State::Ready
        } else {
            State::Building
        }
    }
}

/// The columns of the registry, in the order every backend stores them.
pub const COLUMNS: &str =
    "name, kind, state, fingerprint, setup_key, run_id, owner_pid, owner_start, host, created_at, heartbeat_at, last_used_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub state: State,
    /// The template's fingerprint (a clone carries its template's).
    pub fingerprint: String,
    /// A hash of the setup command alone: templates of one setup are versions of each other.
    pub setup_key: String,
    pub run_id: String,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub heartbeat_at: i64,
    pub last_used_at: i64,
}

impl Entry {
    pub fn new(
        name: String,
        kind: EntryKind,
        fingerprint: &str,
        setup_key: &str,
        run_id: &str,
        owner: &Owner,
    ) -> Entry {
        let now = process::now();
        Entry {
            name,
            kind,
            state: State::Building,
            fingerprint: fingerprint.to_string(),
            setup_key: setup_key.to_string(),
            run_id: run_id.to_string(),
            owner_pid: owner.pid,
            owner_start: owner.start,
            host: owner.host.clone(),
            created_at: now,
            heartbeat_at: now,
            last_used_at: now,
        }
    }

    pub fn set_owner(&mut self, owner: &Owner) {
        self.owner_pid = owner.pid;
        self.owner_start = owner.start;
        self.host = owner.host.clone();
        self.heartbeat_at = process::now();
    }

    /// Whether the entry's owner is gone: its process is dead on this host, or
    /// (for another host's or an ownerless entry) its heartbeat is older than `ttl_secs`.
    pub fn owner_gone(&self, this_host: &str, now: i64, ttl_secs: i64) -> bool {
        if self.owner_pid != 0 && self.host == this_host {
            return !process::is_alive(self.owner_pid, self.owner_start);
        }
        now - self.heartbeat_at > ttl_secs
    }

    pub fn owned_by(&self, owner: &Owner) -> bool {
        self.owner_pid == owner.pid && self.owner_start == owner.start && self.host == owner.host
    }
}
