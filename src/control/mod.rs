//! The control socket: how `ferry status`, `jobs`, `retry`, `pause`, `resume` and `rescan` talk
//! to the daemon. Only this module touches the socket.
//!
//! The socket is created mode 0600 inside a folder of mode 0700, and every connection's peer
//! uid must be the daemon's own. A socket file left by a dead daemon is taken over; one that a
//! live daemon answers on is not. A malformed or oversized request gets an error reply (or a
//! closed connection) and never disturbs the daemon.

pub mod client;
pub mod protocol;
mod server;

pub use client::{ControlError, call};
pub use protocol::{Command, Event, EventKind, RemoteStatus, Reply, StatusReply};
pub use server::{Handler, SocketError, bind, serve};
