//! Configuration: one TOML file per role, every key also a command-line flag.
//!
//! `cttmd primary --config primary.toml --mode async` reads the file, then applies the flags:
//! **a flag overrides the file's key of the same name** (`--heartbeat-interval-ms` is the
//! key `heartbeat_interval_ms`: dashes become underscores). `--service` may be repeated; given
//! as flags, the services replace the file's list. `--key` and `--key-file` replace both
//! `key` and `key_file` of the file. Config files and flags are untrusted input: every
//! mistake is a [`ConfigError`] naming the key and saying what to write instead.
//!
//! ## Primary keys
//!
//! | key | value | default |
//! |---|---|---|
//! | `service` | `"ADDR:PORT"` or a list of them: the service endpoints | required |
//! | `interface` | interface the service traffic crosses | `"eth0"` |
//! | `backup` | `"ADDR:PORT"` of the backup agent's replication listener | required |
//! | `key` | the replication key, 64 hex digits | `key` or `key_file` required |
//! | `key_file` | file holding the key (64 hex digits, or 32 raw bytes); relative to the config file | |
//! | `mode` | `"sync"` (output commit) or `"async"` | `"sync"` |
//! | `heartbeat_interval_ms` | heartbeat interval, 1 to 60000 | 100 |
//! | `heartbeat_misses` | missed heartbeats meaning the peer is dead, 1 to 1000 | 3 |
//! | `retention_limit` | bytes retained for the backup before connections become unprotected | 67108864 (64 MiB) |
//! | `queue` | NFQUEUE queue number (sync mode), 0 to 65535 | 0 |
//! | `degrade_after_ms` | sync mode: stop holding (degrade to async) when the backup is unreachable, or a held packet has waited, this long; 1 to 3600000 | 1000 |
//! | `probe_count` | probes (ARP / neighbour solicitation) of the service address at start and while the backup is silent, 0 to 20 (0: do not probe) | 2 |
//! | `probe_wait_ms` | how long each probe waits for an answer, 1 to 10000 | 100 |
//! | `status_socket` | Unix socket of `cttmd status`; relative to the config file; `""`: none | `"/run/cttmd/primary.sock"` |
//! | `metrics_listen` | `"ADDR:PORT"` serving Prometheus metrics at `/metrics`: a loopback address or an address of this host (not `0.0.0.0` / `::`) | none |
//! | `capture_file` | write every captured frame to this pcapng file (its directory must exist); relative to the config file | none |
//!
//! ## Backup keys
//!
//! | key | value | default |
//! |---|---|---|
//! | `service` | `"ADDR:PORT"` or a list: the service endpoints to take over | required |
//! | `prefix_len` | prefix length of the claimed service address | 24 (IPv4) / 64 (IPv6), after the first service |
//! | `interface` | interface on the service network where the address is claimed | `"eth0"` |
//! | `listen` | `"ADDR:PORT"` where the primary's replication link arrives | `"0.0.0.0:7700"` |
//! | `key` / `key_file` | as for the primary (the same key on both) | required |
//! | `standby` | `"ADDR:PORT"` of the standby daemon (shadow sessions connect there) | loopback, port of the first service |
//! | `heartbeat_interval_ms`, `heartbeat_misses` | as for the primary | 100, 3 |
//! | `announce_count` | gratuitous ARP / unsolicited NA repetitions, 0 to 100 | 3 |
//! | `probe_count`, `probe_wait_ms` | probes of the service address before a takeover (any answer: no takeover), as for the primary | 2, 100 |
//! | `fence_command` | command run with `sh -c` before claiming the address (`CTTM_SERVICE_ADDRESSES` in its environment); its failure aborts the takeover | none |
//! | `fence_timeout_ms` | the longest the fencing command may run, 1 to 600000 (only with `fence_command`) | 10000 |
//! | `status_socket` | as for the primary | `"/run/cttmd/backup.sock"` |
//! | `metrics_listen` | as for the primary | none |
//!
//! What `metrics_listen` must be: a port other than 0 and an address that is a loopback
//! address or is configured on this host (checked by binding a UDP socket to it): never the
//! unspecified address, so metrics are not served on every interface by mistake.
//!
//! Example files: `examples/cttmd/primary.toml`, `examples/cttmd/backup.toml`.

use crate::observe::MAX_SOCKET_PATH_LEN;
use crate::options::{
    BackupOptions, CommitMode, FenceOptions, HeartbeatOptions, ObserveOptions, PrimaryOptions,
    ProbeOptions, ReplicationKey,
};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default `interface`.
pub const DEFAULT_INTERFACE: &str = "eth0";
/// Default `heartbeat_interval_ms`.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Default `heartbeat_misses`.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 3;
/// Default `retention_limit` (64 MiB).
pub const DEFAULT_RETENTION_LIMIT: usize = 64 * 1024 * 1024;
/// Default `queue`.
pub const DEFAULT_QUEUE: u16 = 0;
/// Default `listen` of the backup.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7700);
/// Default `announce_count`.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Default `degrade_after_ms` (the value of [`crate::options::DEFAULT_DEGRADE_AFTER`]).
pub const DEFAULT_DEGRADE_AFTER_MS: u64 = 1000;
/// Default `probe_count` (the count of [`ProbeOptions::DEFAULT`]).
pub const DEFAULT_PROBE_COUNT: u32 = 2;
/// Default `probe_wait_ms` (the wait of [`ProbeOptions::DEFAULT`]).
pub const DEFAULT_PROBE_WAIT_MS: u64 = 100;
/// Default `fence_timeout_ms`.
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 10_000;
/// Default `status_socket` of the primary (also where `cttmd status` looks first).
pub const DEFAULT_PRIMARY_STATUS_SOCKET: &str = "/run/cttmd/primary.sock";
/// Default `status_socket` of the backup (where `cttmd status` looks next).
pub const DEFAULT_BACKUP_STATUS_SOCKET: &str = "/run/cttmd/backup.sock";

/// The flags of `cttmd primary`, for `--help`.
pub const PRIMARY_FLAGS: &str = "\
  --config FILE                 TOML file with the keys below (flags override it)
  --service ADDR:PORT           service endpoint, repeatable (required)
  --interface IF                interface the service traffic crosses (default eth0)
  --backup ADDR:PORT            the backup agent's replication address (required)
  --key HEX64 | --key-file F    replication key: 64 hex digits, or a file holding them (required)
  --mode sync|async             output commit (default sync)
  --heartbeat-interval-ms MS    heartbeat interval (default 100)
  --heartbeat-misses N          missed heartbeats meaning the backup is gone (default 3)
  --retention-limit BYTES       bytes kept for the backup before connections are unprotected
                                (default 67108864)
  --queue N                     NFQUEUE queue number in sync mode (default 0)
  --degrade-after-ms MS         sync mode: stop holding when the backup is unreachable or a held
                                packet has waited this long; back to sync once it caught up
                                (default 1000)
  --probe-count N               probes of the service address at start and while the backup is
                                silent, 0 to 20; 0: do not probe (default 2)
  --probe-wait-ms MS            wait for an answer to each probe (default 100)
  --status-socket PATH          Unix socket of `cttmd status`; \"\" for none
                                (default /run/cttmd/primary.sock)
  --metrics-listen ADDR:PORT    serve Prometheus metrics at http://ADDR:PORT/metrics; a loopback
                                or local address (default: no metrics)
  --capture-file FILE           write every captured frame to this pcapng file (default: none)";

/// The flags of `cttmd backup`, for `--help`.
pub const BACKUP_FLAGS: &str = "\
  --config FILE                 TOML file with the keys below (flags override it)
  --service ADDR:PORT           service endpoint to take over, repeatable (required)
  --prefix-len N                prefix length of the claimed address (default 24 / 64)
  --interface IF                interface where the address is claimed (default eth0)
  --listen ADDR:PORT            replication listener (default 0.0.0.0:7700)
  --key HEX64 | --key-file F    replication key, the primary's (required)
  --standby ADDR:PORT           the standby daemon (default loopback, first service's port)
  --heartbeat-interval-ms MS    heartbeat interval (default 100)
  --heartbeat-misses N          missed heartbeats meaning the primary is dead (default 3)
  --announce-count N            gratuitous ARP / unsolicited NA repetitions (default 3)
  --probe-count N               probes of the service address before a takeover (any answer:
                                no takeover), 0 to 20; 0: do not probe (default 2)
  --probe-wait-ms MS            wait for an answer to each probe (default 100)
  --fence-command CMD           run `sh -c CMD` before claiming the address (env
                                CTTM_SERVICE_ADDRESSES); a failure aborts the takeover
  --fence-timeout-ms MS         the longest the fencing command may run (default 10000)
  --status-socket PATH          Unix socket of `cttmd status`; \"\" for none
                                (default /run/cttmd/backup.sock)
  --metrics-listen ADDR:PORT    serve Prometheus metrics at http://ADDR:PORT/metrics; a loopback
                                or local address (default: no metrics)";

/// The agent role a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `cttmd primary`.
    Primary,
    /// `cttmd backup`.
    Backup,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        })
    }
}

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (its name, e.g. `--backup`).
    Flag(String),
    /// The config file at this path.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::File(path) => write!(f, "in {}", path.display()),
        }
    }
}

/// Reading the configuration of a role failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An argument that is not a flag of this role.
    #[error("unknown argument {argument:?} for `cttmd {role}` (see `cttmd {role} --help`)")]
    UnknownFlag {
        /// The role.
        role: Role,
        /// The argument.
        argument: String,
    },
    /// A flag at the end of the command line without its value.
    #[error("flag {flag} needs a value (see `cttmd {role} --help`)")]
    MissingValue {
        /// The role.
        role: Role,
        /// The flag.
        flag: String,
    },
    /// A flag that may appear once appeared again.
    #[error("flag {flag} given twice: give it once")]
    RepeatedFlag {
        /// The flag.
        flag: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source} (check the path given to --config)", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("config file {}: {message}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The TOML parser's explanation (line, column, key).
        message: String,
    },
    /// A key's value is not acceptable.
    #[error("key `{key}` ({origin}): {problem}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// A required key is missing.
    #[error("key `{key}` is required: {hint}")]
    Missing {
        /// The key.
        key: &'static str,
        /// How to give it.
        hint: &'static str,
    },
    /// Both `key` and `key_file` are set at the same level.
    #[error("both `key` ({key_origin}) and `key_file` ({file_origin}) are set: keep only one")]
    KeyTwice {
        /// Where `key` came from.
        key_origin: Origin,
        /// Where `key_file` came from.
        file_origin: Origin,
    },
    /// The key file could not be read.
    #[error(
        "key `key_file` ({origin}): cannot read {}: {source} (the file must hold the 64 hex digit key)",
        path.display()
    )]
    KeyFile {
        /// Where `key_file` came from.
        origin: Origin,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// One key's raw value(s) and where they came from.
#[derive(Clone, Debug)]
struct Raw {
    values: Vec<String>,
    origin: Origin,
}

/// Every key given, by name: the file's, then the flags' on top.
#[derive(Debug, Default)]
struct Layer(BTreeMap<&'static str, Raw>);

impl Layer {
    fn get(&self, key: &str) -> Option<(&str, &Origin)> {
        self.0
            .get(key)
            .and_then(|r| r.values.first().map(|v| (v.as_str(), &r.origin)))
    }
}

/// How a key's value is written in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A string.
    Text,
    /// A whole number.
    Number,
    /// A path (a string), relative to the config file's directory.
    Path,
    /// `"ADDR:PORT"` or a list of them.
    Services,
}

impl Kind {
    /// What the file must give, for errors.
    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Number => "a whole number",
            Kind::Path => "a path (a string)",
            Kind::Services => "\"ADDR:PORT\" or a list of them, like [\"198.18.0.10:7000\"]",
        }
    }
}

/// The primary's keys (each also a flag: `--heartbeat-interval-ms` is `heartbeat_interval_ms`).
const PRIMARY_KEYS: &[(&str, Kind)] = &[
    ("service", Kind::Services),
    ("interface", Kind::Text),
    ("backup", Kind::Text),
    ("key", Kind::Text),
    ("key_file", Kind::Path),
    ("mode", Kind::Text),
    ("heartbeat_interval_ms", Kind::Number),
    ("heartbeat_misses", Kind::Number),
    ("retention_limit", Kind::Number),
    ("queue", Kind::Number),
    ("degrade_after_ms", Kind::Number),
    ("probe_count", Kind::Number),
    ("probe_wait_ms", Kind::Number),
    ("status_socket", Kind::Path),
    ("metrics_listen", Kind::Text),
    ("capture_file", Kind::Path),
];

/// The backup's keys.
const BACKUP_KEYS: &[(&str, Kind)] = &[
    ("service", Kind::Services),
    ("prefix_len", Kind::Number),
    ("interface", Kind::Text),
    ("listen", Kind::Text),
    ("key", Kind::Text),
    ("key_file", Kind::Path),
    ("standby", Kind::Text),
    ("heartbeat_interval_ms", Kind::Number),
    ("heartbeat_misses", Kind::Number),
    ("announce_count", Kind::Number),
    ("probe_count", Kind::Number),
    ("probe_wait_ms", Kind::Number),
    ("fence_command", Kind::Text),
    ("fence_timeout_ms", Kind::Number),
    ("status_socket", Kind::Path),
    ("metrics_listen", Kind::Text),
];

/// The keys of `role`.
fn role_keys(role: Role) -> &'static [(&'static str, Kind)] {
    match role {
        Role::Primary => PRIMARY_KEYS,
        Role::Backup => BACKUP_KEYS,
    }
}

/// The flags, parsed: `--config` and the keys they set.
struct Flags {
    config: Option<PathBuf>,
    layer: Layer,
}

fn parse_flags(role: Role, arguments: &[String]) -> Result<Flags, ConfigError> {
    let keys = role_keys(role);
    let mut config = None;
    let mut layer = Layer::default();
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        let (flag, inline) = match argument.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (argument.as_str(), None),
        };
        let unknown = || ConfigError::UnknownFlag {
            role,
            argument: argument.clone(),
        };
        let name = flag
            .strip_prefix("--")
            .ok_or_else(unknown)?
            .replace('-', "_");
        let key = if name == "config" {
            "config"
        } else {
            keys.iter()
                .map(|&(k, _)| k)
                .find(|k| *k == name)
                .ok_or_else(unknown)?
        };
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .ok_or_else(|| ConfigError::MissingValue {
                    role,
                    flag: flag.to_string(),
                })?
                .clone(),
        };
        if key == "config" {
            if config.replace(PathBuf::from(value)).is_some() {
                return Err(ConfigError::RepeatedFlag { flag: flag.into() });
            }
            continue;
        }
        let origin = Origin::Flag(flag.to_string());
        match layer.0.get_mut(key) {
            Some(raw) if key == "service" => raw.values.push(value),
            Some(_) => return Err(ConfigError::RepeatedFlag { flag: flag.into() }),
            None => {
                layer.0.insert(
                    key,
                    Raw {
                        values: vec![value],
                        origin,
                    },
                );
            }
        }
    }
    Ok(Flags { config, layer })
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path, e: toml::de::Error) -> ConfigError {
    ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    }
}

/// A path given in a config file (`key_file`, `status_socket`, `capture_file`) is relative
/// to the file's directory; `""` stays `""` (it means "none" for `status_socket`).
fn relative_to_config(value: Option<String>, config: &Path) -> Option<String> {
    value.map(|v| {
        let p = Path::new(&v);
        if p.is_relative() && !v.is_empty() {
            config
                .parent()
                .unwrap_or(Path::new(""))
                .join(p)
                .to_string_lossy()
                .into_owned()
        } else {
            v
        }
    })
}

/// The keys of a config file for `role`: each must be one of the role's keys and hold a
/// value of its kind (errors name the file, the line and the key).
fn file_layer(role: Role, text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| parse_error(path, e))?;
    let origin = Origin::File(path.to_path_buf());
    let file_error = |key: &str, problem: String| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: format!("{}{problem}", line_of(text, key)),
    };
    let mut layer = Layer::default();
    for (key, value) in table {
        let Some(&(name, kind)) = role_keys(role).iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = role_keys(role).iter().map(|&(k, _)| k).collect();
            return Err(file_error(
                &key,
                format!(
                    "unknown field `{key}` for `cttmd {role}`, expected one of {}",
                    known.join(", ")
                ),
            ));
        };
        let found = value.type_str();
        let values = file_values(kind, value, path).ok_or_else(|| {
            file_error(
                &key,
                format!(
                    "key `{key}`: invalid type: {found}, expected {}",
                    kind.expected()
                ),
            )
        })?;
        layer.0.insert(
            name,
            Raw {
                values,
                origin: origin.clone(),
            },
        );
    }
    Ok(layer)
}

/// A file value as the flags' text, if it is of `kind`.
fn file_values(kind: Kind, value: toml::Value, config: &Path) -> Option<Vec<String>> {
    use toml::Value;
    match (kind, value) {
        (Kind::Text, Value::String(s)) => Some(vec![s]),
        (Kind::Path, Value::String(s)) => relative_to_config(Some(s), config).map(|p| vec![p]),
        (Kind::Number, Value::Integer(n)) if n >= 0 => Some(vec![n.to_string()]),
        (Kind::Services, Value::String(s)) => Some(vec![s]),
        (Kind::Services, Value::Array(all)) => all
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `"line N: "` for the line of `text` where `key` is set, or nothing if it cannot be found.
fn line_of(text: &str, key: &str) -> String {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or_else(String::new, |n| format!("line {}: ", n + 1))
}

/// The file's keys with the flags' on top.
fn merged(role: Role, arguments: &[String]) -> Result<Layer, ConfigError> {
    let flags = parse_flags(role, arguments)?;
    let mut layer = match &flags.config {
        Some(path) => file_layer(role, &read_file(path)?, path)?,
        None => Layer::default(),
    };
    check_one_key(&layer)?;
    check_one_key(&flags.layer)?;
    if flags.layer.0.contains_key("key") || flags.layer.0.contains_key("key_file") {
        layer.0.remove("key");
        layer.0.remove("key_file");
    }
    layer.0.extend(flags.layer.0);
    Ok(layer)
}

fn check_one_key(layer: &Layer) -> Result<(), ConfigError> {
    if let (Some((_, k)), Some((_, f))) = (layer.get("key"), layer.get("key_file")) {
        return Err(ConfigError::KeyTwice {
            key_origin: k.clone(),
            file_origin: f.clone(),
        });
    }
    Ok(())
}

/// The primary's options from its command-line arguments (those after `cttmd primary`):
/// `--config FILE` if given, then the flags on top.
pub fn primary_options(arguments: &[String]) -> Result<PrimaryOptions, ConfigError> {
    let layer = merged(Role::Primary, arguments)?;
    Ok(PrimaryOptions {
        services: services(&layer)?,
        interface: interface(&layer)?,
        backup: required_address(
            &layer,
            "backup",
            "198.18.0.3:7700",
            "--backup ADDR:PORT or backup = \"ADDR:PORT\" (the backup agent's listen address)",
        )?,
        key: key(&layer)?,
        mode: match layer.get("mode") {
            None => CommitMode::Sync,
            Some(("sync", _)) => CommitMode::Sync,
            Some(("async", _)) => CommitMode::Async,
            Some((other, origin)) => {
                return Err(invalid(
                    "mode",
                    origin,
                    format!("expected \"sync\" or \"async\", got {other:?}"),
                ));
            }
        },
        heartbeat: heartbeat(&layer)?,
        retention_limit: number(
            &layer,
            "retention_limit",
            1,
            usize::MAX as u64,
            DEFAULT_RETENTION_LIMIT as u64,
        )? as usize,
        queue: number(&layer, "queue", 0, 65535, u64::from(DEFAULT_QUEUE))? as u16,
        degrade_after: Duration::from_millis(number(
            &layer,
            "degrade_after_ms",
            1,
            3_600_000,
            DEFAULT_DEGRADE_AFTER_MS,
        )?),
        probe: probe(&layer)?,
        observe: observe(&layer, DEFAULT_PRIMARY_STATUS_SOCKET)?,
        capture_file: capture_file(&layer)?,
    })
}

/// The backup's options from its command-line arguments (those after `cttmd backup`).
pub fn backup_options(arguments: &[String]) -> Result<BackupOptions, ConfigError> {
    let layer = merged(Role::Backup, arguments)?;
    let services = services(&layer)?;
    let first = services[0];
    let prefix_default = if first.is_ipv4() { 24 } else { 64 };
    let prefix_max = if services.iter().any(SocketAddr::is_ipv4) {
        32
    } else {
        128
    };
    let service_prefix_len = number(&layer, "prefix_len", 1, prefix_max, prefix_default)? as u8;
    let standby_default = match first {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), first.port()),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), first.port()),
    };
    Ok(BackupOptions {
        services,
        service_prefix_len,
        interface: interface(&layer)?,
        listen: address(&layer, "listen", "0.0.0.0:7700", true)?.unwrap_or(DEFAULT_LISTEN),
        key: key(&layer)?,
        standby: address(&layer, "standby", "127.0.0.1:7000", false)?.unwrap_or(standby_default),
        heartbeat: heartbeat(&layer)?,
        announce_count: number(
            &layer,
            "announce_count",
            0,
            100,
            u64::from(DEFAULT_ANNOUNCE_COUNT),
        )? as u32,
        probe: probe(&layer)?,
        fence: fence(&layer)?,
        observe: observe(&layer, DEFAULT_BACKUP_STATUS_SOCKET)?,
    })
}

fn invalid(key: &'static str, origin: &Origin, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: origin.clone(),
        problem,
    }
}

fn parse_address(
    key: &'static str,
    value: &str,
    origin: &Origin,
    example: &str,
    allow_unspecified: bool,
) -> Result<SocketAddr, ConfigError> {
    let address: SocketAddr = value.trim().parse().map_err(|_| {
        invalid(
            key,
            origin,
            format!("expected ADDR:PORT like {example}, got {value:?} (IPv6: [2001:db8::3]:7700)"),
        )
    })?;
    if address.port() == 0 {
        return Err(invalid(
            key,
            origin,
            format!("port 0 in {value:?}: give the real port, like {example}"),
        ));
    }
    if !allow_unspecified && address.ip().is_unspecified() {
        return Err(invalid(
            key,
            origin,
            format!(
                "{value:?} is not an address one can connect to: give a host's address, like {example}"
            ),
        ));
    }
    Ok(address)
}

fn address(
    layer: &Layer,
    key: &'static str,
    example: &str,
    allow_unspecified: bool,
) -> Result<Option<SocketAddr>, ConfigError> {
    layer
        .get(key)
        .map(|(v, origin)| parse_address(key, v, origin, example, allow_unspecified))
        .transpose()
}

fn required_address(
    layer: &Layer,
    key: &'static str,
    example: &str,
    hint: &'static str,
) -> Result<SocketAddr, ConfigError> {
    address(layer, key, example, false)?.ok_or(ConfigError::Missing { key, hint })
}

fn services(layer: &Layer) -> Result<Vec<SocketAddr>, ConfigError> {
    let missing = ConfigError::Missing {
        key: "service",
        hint: "--service ADDR:PORT (repeatable) or service = [\"198.18.0.10:7000\"]",
    };
    let Some(raw) = layer.0.get("service") else {
        return Err(missing);
    };
    if raw.values.is_empty() {
        return Err(missing);
    }
    let mut all = Vec::new();
    for v in &raw.values {
        let a = parse_address("service", v, &raw.origin, "198.18.0.10:7000", false)?;
        if all.contains(&a) {
            return Err(invalid(
                "service",
                &raw.origin,
                format!("{a} is listed twice: list each endpoint once"),
            ));
        }
        all.push(a);
    }
    Ok(all)
}

fn interface(layer: &Layer) -> Result<String, ConfigError> {
    let Some((name, origin)) = layer.get("interface") else {
        return Ok(DEFAULT_INTERFACE.to_string());
    };
    // IFNAMSIZ is 16 with the terminating NUL (include/uapi/linux/if.h)
    let valid = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ' ', '\t', '\n', ':'])
        && name != "."
        && name != "..";
    if !valid {
        return Err(invalid(
            "interface",
            origin,
            format!(
                "expected an interface name like eth0 (1 to 15 characters, no '/', ':' or spaces), got {name:?}"
            ),
        ));
    }
    Ok(name.to_string())
}

fn number(
    layer: &Layer,
    key: &'static str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some((text, origin)) = layer.get(key) else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            key,
            origin,
            format!("expected a whole number from {min} to {max}, got {text:?}"),
        )),
    }
}

fn heartbeat(layer: &Layer) -> Result<HeartbeatOptions, ConfigError> {
    Ok(HeartbeatOptions {
        interval: Duration::from_millis(number(
            layer,
            "heartbeat_interval_ms",
            1,
            60_000,
            DEFAULT_HEARTBEAT_INTERVAL_MS,
        )?),
        misses: number(
            layer,
            "heartbeat_misses",
            1,
            1000,
            u64::from(DEFAULT_HEARTBEAT_MISSES),
        )? as u32,
    })
}

fn probe(layer: &Layer) -> Result<ProbeOptions, ConfigError> {
    Ok(ProbeOptions {
        count: number(layer, "probe_count", 0, 20, u64::from(DEFAULT_PROBE_COUNT))? as u32,
        wait: Duration::from_millis(number(
            layer,
            "probe_wait_ms",
            1,
            10_000,
            DEFAULT_PROBE_WAIT_MS,
        )?),
    })
}

fn observe(layer: &Layer, default_socket: &str) -> Result<ObserveOptions, ConfigError> {
    Ok(ObserveOptions {
        status_socket: status_socket(layer, default_socket)?,
        metrics: metrics_listen(layer)?,
    })
}

fn status_socket(layer: &Layer, default: &str) -> Result<Option<PathBuf>, ConfigError> {
    let Some((path, origin)) = layer.get("status_socket") else {
        return Ok(Some(PathBuf::from(default)));
    };
    if path.is_empty() {
        return Ok(None);
    }
    let problem = if path.contains('\0') {
        Some("a path cannot hold a NUL character".to_string())
    } else if path.ends_with('/') {
        Some(format!(
            "{path:?} names a directory: give the socket file's path, like {default}"
        ))
    } else if path.len() > MAX_SOCKET_PATH_LEN {
        Some(format!(
            "{path:?} is {} bytes long: a Unix socket path has at most {MAX_SOCKET_PATH_LEN}; give a shorter one",
            path.len()
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid(
            "status_socket",
            origin,
            format!("{problem} (\"\" for no status socket)"),
        )),
        None => Ok(Some(PathBuf::from(path))),
    }
}

/// `metrics_listen`: a port, and an address that is loopback or configured on this host.
fn metrics_listen(layer: &Layer) -> Result<Option<SocketAddr>, ConfigError> {
    let Some((value, origin)) = layer.get("metrics_listen") else {
        return Ok(None);
    };
    let example = "127.0.0.1:9464";
    let address = parse_address("metrics_listen", value, origin, example, true)?;
    let ip = address.ip();
    if ip.is_unspecified() {
        return Err(invalid(
            "metrics_listen",
            origin,
            format!(
                "{value:?} would serve metrics on every interface: give a loopback or local address, like {example}"
            ),
        ));
    }
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(invalid(
            "metrics_listen",
            origin,
            format!("{ip} is not a host address: give a loopback or local address, like {example}"),
        ));
    }
    // an address of this host can be bound (port 0: nothing is taken)
    if !ip.is_loopback() && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_err() {
        return Err(invalid(
            "metrics_listen",
            origin,
            format!(
                "{ip} is not an address of this host: metrics are served on a local address only (a loopback address like {example}, or one of this host's addresses)"
            ),
        ));
    }
    Ok(Some(address))
}

fn capture_file(layer: &Layer) -> Result<Option<PathBuf>, ConfigError> {
    let Some((value, origin)) = layer.get("capture_file") else {
        return Ok(None);
    };
    let path = Path::new(value);
    let problem = if value.is_empty() {
        Some("empty: give a file path, or leave the key out for no capture file".to_string())
    } else if value.contains('\0') {
        Some("a path cannot hold a NUL character".to_string())
    } else if value.ends_with('/') || path.is_dir() {
        Some(format!(
            "{value:?} is a directory: give a file path, like /var/tmp/cttmd-primary.pcapng"
        ))
    } else {
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => Some(format!(
                "the directory {} does not exist: create it or write the file elsewhere",
                dir.display()
            )),
            _ => None,
        }
    };
    match problem {
        Some(problem) => Err(invalid("capture_file", origin, problem)),
        None => Ok(Some(path.to_path_buf())),
    }
}

fn fence(layer: &Layer) -> Result<Option<FenceOptions>, ConfigError> {
    let timeout = Duration::from_millis(number(
        layer,
        "fence_timeout_ms",
        1,
        600_000,
        DEFAULT_FENCE_TIMEOUT_MS,
    )?);
    let Some((command, origin)) = layer.get("fence_command") else {
        if let Some((_, origin)) = layer.get("fence_timeout_ms") {
            return Err(invalid(
                "fence_timeout_ms",
                origin,
                "set without `fence_command`: give the fencing command too, or leave both out"
                    .to_string(),
            ));
        }
        return Ok(None);
    };
    if command.trim().is_empty() {
        return Err(invalid(
            "fence_command",
            origin,
            "empty: give a command line (run with `sh -c`), or leave the key out for no fencing"
                .to_string(),
        ));
    }
    if command.contains('\0') {
        return Err(invalid(
            "fence_command",
            origin,
            "a command line cannot hold a NUL character".to_string(),
        ));
    }
    Ok(Some(FenceOptions {
        command: command.to_string(),
        timeout,
    }))
}

/// Parses 64 hex digits (surrounding whitespace ignored) into a key.
pub fn parse_key_hex(text: &str) -> Option<ReplicationKey> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(key)
}

/// A key as 64 lowercase hex digits (for passing it on to another process).
pub fn key_to_hex(key: &ReplicationKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(layer: &Layer) -> Result<ReplicationKey, ConfigError> {
    if let Some((text, origin)) = layer.get("key") {
        return parse_key_hex(text).ok_or_else(|| {
            invalid(
                "key",
                origin,
                format!(
                    "expected 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`), got {} characters",
                    text.trim().len()
                ),
            )
        });
    }
    if let Some((path, origin)) = layer.get("key_file") {
        let path = PathBuf::from(path);
        let bytes = std::fs::read(&path).map_err(|source| ConfigError::KeyFile {
            origin: origin.clone(),
            path: path.clone(),
            source,
        })?;
        if let Some(key) = std::str::from_utf8(&bytes).ok().and_then(parse_key_hex) {
            return Ok(key);
        }
        if let Ok(key) = ReplicationKey::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        return Err(invalid(
            "key_file",
            origin,
            format!(
                "{} holds {} bytes: it must hold 64 hex digits (e.g. `openssl rand -hex 32 > {}`) or exactly 32 raw bytes",
                path.display(),
                bytes.len(),
                path.display()
            ),
        ));
    }
    Err(ConfigError::Missing {
        key: "key",
        hint: "--key HEX64, --key-file FILE, key = \"<64 hex digits>\" or key_file = \"FILE\" (the same key on primary and backup)",
    })
}
