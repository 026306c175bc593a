//! Ctrl-C and SIGTERM: the first asks the running command to stop and clean
//! up what it made; a second one exits at once (garbage collection, which
//! every later dbfork command can run, removes what that leaves).

use dbfork_engine::ops::{Cancel, Canceller};
use tokio::signal::unix::{signal, SignalKind};

pub fn install() -> Cancel {
    let (canceller, cancel) = Cancel::new();
    tokio::spawn(watch(canceller));
    cancel
}

async fn watch(canceller: Canceller) {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            eprintln!("dbfork: interrupted; cleaning up (press Ctrl-C again to exit at once)");
            canceller.cancel();
        } else {
            eprintln!("dbfork: exiting at once; `dbfork db gc` removes what is left");
            std::process::exit(crate::errors::INTERRUPTED);
        }
    }
}
