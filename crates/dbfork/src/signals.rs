//! Ctrl-C, SIGTERM and SIGHUP (the terminal closed, an ssh session dropped,
//! tmux killed): the first asks the running command to stop and clean up
//! what it made; a second one exits at once (garbage collection, which
//! every later dbfork command can run, removes what that leaves).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dbfork_engine::ops::{Cancel, Canceller};
use tokio::signal::unix::{signal, SignalKind};

/// Ctrl-C and SIGTERM received before `dbfork run` listens for them.
static EARLY: AtomicUsize = AtomicUsize::new(0);
/// Set once the run listens itself: the early handler then counts nothing.
static LISTENING: AtomicBool = AtomicBool::new(false);

extern "C" fn count_early(_: dbfork_engine::sys::Signal) {
    // Only atomics: async-signal-safe.
    if !LISTENING.load(Ordering::SeqCst) {
        EARLY.fetch_add(1, Ordering::SeqCst);
    }
}

/// The first thing `main` does: a Ctrl-C or SIGTERM from here on is
/// counted, not a kill, until the run listens and takes the count
/// ([`early_signals`]).
pub fn catch_early() {
    // The handler only touches atomics.
    dbfork_engine::sys::on_stop_signals(count_early);
}

/// How many signals came before the run listened (call after it listens).
pub fn early_signals() -> usize {
    LISTENING.store(true, Ordering::SeqCst);
    EARLY.swap(0, Ordering::SeqCst)
}

pub fn install() -> Cancel {
    let (canceller, cancel) = Cancel::new();
    tokio::spawn(watch(canceller));
    cancel
}

async fn watch(canceller: Canceller) {
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            dbfork_meta::say!(
                "dbfork: interrupted; cleaning up (press Ctrl-C again to exit at once)"
            );
            canceller.cancel();
        } else {
            dbfork_meta::say!("dbfork: exiting at once; `dbfork db gc` removes what is left");
            std::process::exit(dbfork_meta::exit::INTERRUPTED);
        }
    }
}
