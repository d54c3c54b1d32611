//! Integration tests: one binary, real receivers on loopback, the real engine and the real
//! `ferry` binary. See `support` for the helpers and the fault proxy.

mod adaptive;
mod bwlimit;
mod ceph;
mod connect;
mod crash;
mod daemon;
mod hardening;
mod hooks;
mod http;
mod metrics;
mod ownership;
mod protocol;
mod receiver_guards;
mod s3;
mod s3_keys;
mod service;
mod support;
mod upload;
