//! dbfork's engine: everything dbfork does to a database server.
//!
//! A *template* is a database built once by the project's own setup command and
//! named by a fingerprint of its inputs; a *clone* is a copy of a template made
//! by the cheapest correct method of its backend; the *registry*, kept in the
//! server itself, records every database dbfork created, and nothing outside it
//! is ever dropped. The backends share one trait ([`backend::Backend`]); the
//! operations users see (build a template, make clones, drop, list, collect
//! garbage) are written once over it in [`ops`]. Every call into the
//! operating system beyond `std` is in [`sys`].

pub mod backend;
pub mod cache;
pub mod credentials;
pub mod ephemeral;
pub mod error;
pub mod files;
pub mod fingerprint;
pub mod names;
pub mod ops;
pub mod pool;
pub mod process;
pub mod reaper;
pub mod registry;
pub mod sys;
pub mod url;

pub use backend::{AnyBackend, Backend, CloneMethod};
pub use error::{Error, Result};
pub use url::{DbUrl, Kind, Target};

/// Bumped whenever the way dbfork builds or seals a template changes, so that
/// templates made by an older dbfork are never reused.
pub const TEMPLATE_FORMAT_VERSION: u32 = 1;
