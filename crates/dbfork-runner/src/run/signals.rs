//! Signals: listened to from the very start of `dbfork run`, then watched
//! for the run (cancel, tell the machine, exit at the third), and the
//! machine's signals as Unix numbers.

use super::*;

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal), listened to from the
/// start of `dbfork run` (before the database is opened and the run
/// prepared): one that comes that early is kept until the run's watcher
/// takes it, instead of killing dbfork.
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    /// Signals that came before even this listened (the program's own early handler).
    early: usize,
}

impl Signals {
    /// Starts listening (within the async runtime).
    pub fn listen() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
            early: 0,
        }
    }

    /// Counts `early` signals as received.
    pub fn with_early(mut self, early: usize) -> Signals {
        self.early = early;
        self
    }
}

/// The first Ctrl-C or SIGTERM cancels clone making and template builds and
/// tells the run; the third exits at once (what is left is collected by
/// the next dbfork command, and the workers die with dbfork).
pub(super) async fn watch_signals(
    signals: Signals,
    canceller: Canceller,
    events: mpsc::UnboundedSender<Event>,
) {
    let (Some(mut int), Some(mut term), Some(mut hup)) = (signals.int, signals.term, signals.hup)
    else {
        return;
    };
    let mut seen = 0;
    let mut early = signals.early;
    loop {
        if early > 0 {
            early -= 1;
        } else {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        seen += 1;
        canceller.cancel();
        if seen >= 3 {
            dbfork_meta::say!(
                "dbfork: exiting at once; the next dbfork command removes what is left"
            );
            std::process::exit(exit::INTERRUPTED);
        }
        if events.send(Event::Input(Input::Signal)).is_err() {
            return;
        }
    }
}

/// The Unix signal of the machine's [`Sig`].
pub(super) fn signal_number(signal: Sig) -> i32 {
    match signal {
        Sig::Interrupt => dbfork_engine::sys::SIGINT,
        Sig::Kill => dbfork_engine::sys::SIGKILL,
    }
}
