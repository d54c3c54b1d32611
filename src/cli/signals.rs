//! The process's signals, for `ferry run` and `ferry serve`: one handler, so that both stop
//! the same way.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// SIGTERM or SIGINT: stop cleanly.
    Stop,
    /// SIGHUP: read the configuration again.
    Reload,
}

/// The signals a command handles.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Option<Signal>,
}

impl Signals {
    /// Handles SIGTERM and SIGINT, and SIGHUP when `reload` (else SIGHUP keeps its default
    /// action and ends the process, as for any command-line tool).
    pub fn install(reload: bool) -> Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hangup: match reload {
                true => Some(signal(SignalKind::hangup()).context("cannot handle SIGHUP")?),
                false => None,
            },
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Asked {
        let hangup = async {
            match &mut self.hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.terminate.recv() => Asked::Stop,
            _ = self.interrupt.recv() => Asked::Stop,
            _ = hangup => Asked::Reload,
        }
    }
}
