//! What a run produced: the report types live in `dbfork_meta::report`,
//! where other programs (a merger of shards, the pool service) read them.

pub use dbfork_meta::report::*;
