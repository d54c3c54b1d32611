//! `ferry service install|uninstall|status`: Ferry as a systemd unit (Linux) or a launchd agent
//! (macOS). The unit or property list is rendered from the templates kept in the repository
//! (`systemd/`, `packaging/launchd/`) with the path of the running binary and of the
//! configuration, written only when it differs from what is there (so a second run changes
//! nothing), then enabled and started with systemctl or launchctl. Where those cannot be used
//! (no systemd running, no user manager reachable), the exact commands are printed instead.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const SYSTEM_UNIT: &str = include_str!("../../systemd/system/ferry.service");
const USER_UNIT: &str = include_str!("../../systemd/user/ferry.service");
const LAUNCHD_AGENT: &str = include_str!("../../packaging/launchd/io.ferry.daemon.plist");

const UNIT_NAME: &str = "ferry.service";
const LAUNCHD_LABEL: &str = "io.ferry.daemon";
/// The configuration the system unit reads unless told otherwise.
const SYSTEM_CONFIG: &str = "/etc/ferry/config.toml";
const SYSTEM_USER: &str = "ferry";

/// Whose service: the user's own (`systemctl --user`, a launch agent) or the machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    System,
}

/// Which service manager the platform has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    pub fn of_this_platform() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot find the home folder (is HOME set?)")]
    NoHome,
    #[error("cannot find the path of the running ferry binary")]
    Exe(#[source] std::io::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); run it by hand to see why")]
    Command { command: String, status: String },
}

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct Service {
    pub scope: Scope,
    pub manager: Manager,
    /// The unit file or property list.
    pub path: PathBuf,
    /// What it should contain.
    pub contents: String,
    /// The configuration it names, if any (a user service may leave it to the daemon).
    pub config: Option<PathBuf>,
    uid: u32,
    /// The service manager can be driven from here (probed once, at construction).
    usable: bool,
}

impl Service {
    /// The service for `scope` on this platform, running this very binary with `config` (for a
    /// user service, none means the daemon's own lookup: the platform file, else its default).
    pub fn for_this_binary(scope: Scope, config: Option<&Path>) -> Result<Service, ServiceError> {
        let exe = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(ServiceError::Exe)?;
        let mut config = config
            .map(std::path::absolute)
            .transpose()
            .map_err(ServiceError::Exe)?;
        if scope == Scope::System {
            config.get_or_insert_with(|| PathBuf::from(SYSTEM_CONFIG));
        }
        let dirs = directories::BaseDirs::new().ok_or(ServiceError::NoHome)?;
        let manager = Manager::of_this_platform();
        let (path, contents) = unit_file(manager, scope, &dirs, &exe, config.as_deref());
        let mut service = Service {
            scope,
            manager,
            path,
            contents,
            config,
            // SAFETY: getuid has no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            usable: false,
        };
        service.usable = service.probe_manager();
        Ok(service)
    }

    /// Whether the unit on disk is exactly what `install` writes.
    pub fn installed(&self) -> Option<bool> {
        std::fs::read_to_string(&self.path)
            .ok()
            .map(|text| text == self.contents)
    }

    /// `systemctl` or `launchctl` with this scope's arguments.
    fn manager_command(&self, args: &[&str]) -> Vec<String> {
        let mut command = match self.manager {
            Manager::Systemd => vec!["systemctl".to_string()],
            Manager::Launchd => vec!["launchctl".to_string()],
        };
        if self.manager == Manager::Systemd && self.scope == Scope::User {
            command.push("--user".into());
        }
        command.extend(args.iter().map(|arg| arg.to_string()));
        command
    }

    fn launchd_domain(&self) -> String {
        match self.scope {
            Scope::User => format!("gui/{}", self.uid),
            Scope::System => "system".into(),
        }
    }

    /// The agent as launchctl names it: `gui/<uid>/io.ferry.daemon` or `system/io.ferry.daemon`.
    fn launchd_target(&self) -> String {
        format!("{}/{LAUNCHD_LABEL}", self.launchd_domain())
    }

    /// Whether the service manager can be driven from here: systemd is running (and for a
    /// user unit, this user's manager answers), or launchctl exists.
    fn probe_manager(&self) -> bool {
        match self.manager {
            Manager::Systemd => {
                Path::new("/run/systemd/system").is_dir()
                    && run_quietly(&self.manager_command(&["show-environment"]))
            }
            Manager::Launchd => run_quietly(&["launchctl".into(), "version".into()]),
        }
    }

    /// The commands that load and start the service after its file was written.
    fn start_commands(&self, changed: bool) -> Vec<Vec<String>> {
        match self.manager {
            Manager::Systemd if changed => vec![
                self.manager_command(&["daemon-reload"]),
                self.manager_command(&["enable", UNIT_NAME]),
                // Starts it, or restarts it with the new unit if it was running.
                self.manager_command(&["restart", UNIT_NAME]),
            ],
            Manager::Systemd => vec![self.manager_command(&["enable", "--now", UNIT_NAME])],
            Manager::Launchd => {
                let domain = self.launchd_domain();
                let path = self.path.display().to_string();
                vec![self.manager_command(&["bootstrap", &domain, &path])]
            }
        }
    }

    fn stop_commands(&self) -> Vec<Vec<String>> {
        match self.manager {
            Manager::Systemd => vec![self.manager_command(&["disable", "--now", UNIT_NAME])],
            Manager::Launchd => {
                let target = self.launchd_target();
                vec![self.manager_command(&["bootout", &target])]
            }
        }
    }

    /// Writes the unit if it differs, then enables and starts it (or prints how to). Returns
    /// what it did, for the user.
    pub fn install(&self) -> Result<String, ServiceError> {
        let mut report = String::new();
        let changed = self.write_unit(&mut report)?;
        let mut commands: Vec<Vec<String>> = self.create_user_command().into_iter().collect();
        if let Some(config) = self.config.as_ref().filter(|config| !config.exists()) {
            let _ = writeln!(
                report,
                "note: {} does not exist yet; write it (see config.example.toml) before the service can start",
                config.display()
            );
        }
        if changed || !self.is_loaded() {
            commands.extend(self.start_commands(changed));
        }
        self.run_or_print(&commands, &mut report)?;
        Ok(report)
    }

    /// Writes the unit file unless it is up to date, saying which in `report`; returns whether
    /// it wrote it. A loaded launchd agent is booted out first: it keeps its old definition
    /// until then.
    fn write_unit(&self, report: &mut String) -> Result<bool, ServiceError> {
        let existing = self.installed();
        if existing == Some(true) {
            let _ = writeln!(report, "{} is up to date", self.path.display());
            return Ok(false);
        }
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ServiceError::Write { path, source }
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        if self.manager == Manager::Launchd && existing.is_some() && self.usable {
            for command in self.stop_commands() {
                run_quietly(&command);
            }
        }
        std::fs::write(&self.path, &self.contents).map_err(write_error(&self.path))?;
        let _ = writeln!(report, "wrote {}", self.path.display());
        Ok(true)
    }

    /// The command that creates the system user a system-wide systemd unit runs as, when it
    /// does not exist yet.
    fn create_user_command(&self) -> Option<Vec<String>> {
        let needed = self.scope == Scope::System
            && self.manager == Manager::Systemd
            && !user_exists(SYSTEM_USER);
        let command = [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/ferry",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ];
        needed.then(|| command.map(String::from).to_vec())
    }

    /// Stops and disables the service and removes its file (or prints how to stop it).
    pub fn uninstall(&self) -> Result<String, ServiceError> {
        let mut report = String::new();
        if self.installed().is_none() {
            let _ = writeln!(
                report,
                "{} is not installed; nothing to do",
                self.path.display()
            );
            return Ok(report);
        }
        self.run_or_print(&self.stop_commands(), &mut report)?;
        std::fs::remove_file(&self.path).map_err(|source| ServiceError::Remove {
            path: self.path.clone(),
            source,
        })?;
        let _ = writeln!(report, "removed {}", self.path.display());
        if self.manager == Manager::Systemd {
            self.run_or_print(&[self.manager_command(&["daemon-reload"])], &mut report)?;
        }
        Ok(report)
    }

    /// Where the unit is, whether it is current, and what the service manager says of it.
    pub fn status(&self) -> String {
        let mut report = String::new();
        let state = match self.installed() {
            None => "not installed",
            Some(true) => "installed, up to date",
            Some(false) => "installed, differs from what `ferry service install` writes",
        };
        let _ = writeln!(report, "{}: {state}", self.path.display());
        if !self.usable {
            let _ = writeln!(report, "{}", self.unusable_reason());
            return report;
        }
        let queries: Vec<Vec<String>> = match self.manager {
            Manager::Systemd => vec![
                self.manager_command(&["is-enabled", UNIT_NAME]),
                self.manager_command(&["is-active", UNIT_NAME]),
            ],
            Manager::Launchd => {
                let target = self.launchd_target();
                vec![self.manager_command(&["print", &target])]
            }
        };
        for query in queries {
            let answer = Command::new(&query[0])
                .args(&query[1..])
                .output()
                .map(|output| {
                    let text = String::from_utf8_lossy(&output.stdout);
                    text.lines().next().unwrap_or("").trim().to_string()
                })
                .unwrap_or_else(|error| error.to_string());
            let _ = writeln!(report, "{}: {answer}", query.join(" "));
        }
        report
    }

    fn is_loaded(&self) -> bool {
        if !self.usable {
            return false;
        }
        match self.manager {
            Manager::Systemd => {
                run_quietly(&self.manager_command(&["is-enabled", "--quiet", UNIT_NAME]))
                    && run_quietly(&self.manager_command(&["is-active", "--quiet", UNIT_NAME]))
            }
            Manager::Launchd => {
                let target = self.launchd_target();
                run_quietly(&self.manager_command(&["print", &target]))
            }
        }
    }

    fn unusable_reason(&self) -> &'static str {
        match (self.manager, self.scope) {
            (Manager::Systemd, Scope::User) => {
                "systemd's user manager is not reachable from here (no systemd, or no login session)"
            }
            (Manager::Systemd, Scope::System) => "systemd is not running here",
            (Manager::Launchd, _) => "launchctl is not available here",
        }
    }

    /// Runs `commands` if the service manager can be used from here; else prints them.
    fn run_or_print(
        &self,
        commands: &[Vec<String>],
        report: &mut String,
    ) -> Result<(), ServiceError> {
        if commands.is_empty() {
            return Ok(());
        }
        if self.usable {
            for command in commands {
                let _ = writeln!(report, "ran: {}", command.join(" "));
                let status = Command::new(&command[0])
                    .args(&command[1..])
                    .status()
                    .map_err(|error| error.to_string())
                    .and_then(|status| {
                        if status.success() {
                            Ok(())
                        } else {
                            Err(status.to_string())
                        }
                    });
                if let Err(status) = status {
                    return Err(ServiceError::Command {
                        command: command.join(" "),
                        status,
                    });
                }
            }
        } else {
            let _ = writeln!(report, "{}; to finish, run:", self.unusable_reason());
            for command in commands {
                let _ = writeln!(report, "  {}", shell_words(command));
            }
        }
        Ok(())
    }
}

/// The systemd unit `template` with its `ExecStartPre=`/`ExecStart=` lines pointing at `exe`
/// and, when given, `config`.
pub fn render_unit(template: &str, exe: &Path, config: Option<&Path>) -> String {
    let mut command = systemd_quote(&exe.display().to_string());
    if let Some(config) = config {
        command.push_str(" --config ");
        command.push_str(&systemd_quote(&config.display().to_string()));
    }
    let mut unit = String::from(
        "# Written by `ferry service install`; run it again after moving the binary.\n",
    );
    for line in template.lines() {
        if line.starts_with("ExecStartPre=") {
            let _ = writeln!(unit, "ExecStartPre={command} config check");
        } else if line.starts_with("ExecStart=") {
            let _ = writeln!(unit, "ExecStart={command} run");
        } else {
            unit.push_str(line);
            unit.push('\n');
        }
    }
    unit
}

/// The launchd property list running `exe run`, logging into `logs`.
pub fn render_plist(exe: &Path, config: Option<&Path>, logs: &Path) -> String {
    let string = |text: &str| format!("<string>{}</string>", xml_escape(text));
    let mut arguments = vec![string(&exe.display().to_string())];
    if let Some(config) = config {
        arguments.push(string("--config"));
        arguments.push(string(&config.display().to_string()));
    }
    arguments.push(string("run"));
    let log = logs.join("ferry.log").display().to_string();
    // The template's first comment tells how to install it by hand: not for the written file.
    let template = match (LAUNCHD_AGENT.find("<!--"), LAUNCHD_AGENT.find("-->\n")) {
        (Some(start), Some(end)) => {
            format!("{}{}", &LAUNCHD_AGENT[..start], &LAUNCHD_AGENT[end + 4..])
        }
        _ => LAUNCHD_AGENT.to_string(),
    };
    template
        .replace(
            "<string>/usr/local/bin/ferry</string>\n\t\t<string>run</string>",
            &arguments.join("\n\t\t"),
        )
        .replace(
            "<string>/Users/USER/Library/Logs/ferry.log</string>",
            &string(&log),
        )
}

/// An argument as systemd reads it on an `Exec` line: `%` and `$` escaped, quoted if needed.
fn systemd_quote(argument: &str) -> String {
    let escaped = argument.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A command line as a POSIX shell reads it.
fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_quietly(command: &[String]) -> bool {
    Command::new(&command[0])
        .args(&command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn user_exists(name: &str) -> bool {
    let name = std::ffi::CString::new(name).expect("user names have no NUL");
    // SAFETY: getpwnam reads a NUL-terminated string; the result is only tested for null.
    !unsafe { libc::getpwnam(name.as_ptr()) }.is_null()
}

/// Where the unit (or property list) for `manager` and `scope` goes, and what it says.
fn unit_file(
    manager: Manager,
    scope: Scope,
    dirs: &directories::BaseDirs,
    exe: &Path,
    config: Option<&Path>,
) -> (PathBuf, String) {
    match (manager, scope) {
        (Manager::Systemd, Scope::User) => (
            dirs.config_dir().join("systemd/user").join(UNIT_NAME),
            render_unit(USER_UNIT, exe, config),
        ),
        (Manager::Systemd, Scope::System) => (
            Path::new("/etc/systemd/system").join(UNIT_NAME),
            render_unit(SYSTEM_UNIT, exe, config),
        ),
        (Manager::Launchd, Scope::User) => (
            dirs.home_dir()
                .join("Library/LaunchAgents")
                .join(format!("{LAUNCHD_LABEL}.plist")),
            render_plist(exe, config, &dirs.home_dir().join("Library/Logs")),
        ),
        (Manager::Launchd, Scope::System) => (
            Path::new("/Library/LaunchDaemons").join(format!("{LAUNCHD_LABEL}.plist")),
            render_plist(exe, config, Path::new("/Library/Logs")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_run_this_binary_with_its_configuration() {
        let unit = render_unit(
            SYSTEM_UNIT,
            Path::new("/opt/ferry 1/bin/ferry"),
            Some(Path::new("/etc/ferry/100%.toml")),
        );
        assert!(
            unit.contains(
                "\nExecStart=\"/opt/ferry 1/bin/ferry\" --config /etc/ferry/100%%.toml run\n"
            ),
            "{unit}"
        );
        assert!(unit.contains("\nExecStartPre=\"/opt/ferry 1/bin/ferry\" --config /etc/ferry/100%%.toml config check\n"));
        assert!(unit.contains("\nUser=ferry\n"));
        let unit = render_unit(USER_UNIT, Path::new("/home/a/.cargo/bin/ferry"), None);
        assert!(
            unit.contains("\nExecStart=/home/a/.cargo/bin/ferry run\n"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/bin/ferry"));
    }

    #[test]
    fn the_agent_runs_this_binary_and_logs_in_the_given_folder() {
        let plist = render_plist(
            Path::new("/opt/homebrew/bin/ferry"),
            Some(Path::new("/Users/a/ferry & co.toml")),
            Path::new("/Users/a/Library/Logs"),
        );
        assert!(plist.contains("<string>/opt/homebrew/bin/ferry</string>\n\t\t<string>--config</string>\n\t\t<string>/Users/a/ferry &amp; co.toml</string>\n\t\t<string>run</string>"), "{plist}");
        assert!(plist.contains("<string>/Users/a/Library/Logs/ferry.log</string>"));
        assert!(!plist.contains("USER"));
    }

    #[test]
    fn printed_commands_survive_a_shell() {
        let words = [
            "systemctl",
            "--user",
            "enable",
            "--now",
            "ferry.service",
            "a b",
            "it's",
        ]
        .map(String::from);
        assert_eq!(
            shell_words(&words),
            r"systemctl --user enable --now ferry.service 'a b' 'it'\''s'"
        );
    }
}
