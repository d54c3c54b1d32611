//! Ferry as a service: talking to systemd while it runs (`notify`) and installing itself as a
//! systemd unit or launchd agent (`install`).

pub mod install;
pub mod notify;
