//! Ferry: a daemon that watches folders and reliably uploads every new or changed file with
//! chunked, resumable uploads. See ARCHITECTURE.md for the map.

pub mod cleanup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod hooks;
pub mod local_path;
pub mod output;
pub mod protocol;
pub mod push;
pub mod queue;
pub mod redact;
pub mod remotes;
pub mod secret;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod upload;
pub mod watch;

pub use error::UsageError;
