//! Installing Ferry as a systemd unit or launchd agent.
