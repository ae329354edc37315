//! `embedded-token-server`: runs one side of the token server with CTTM embedded.
//!
//! Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when a side fails, 2 for bad
//! arguments.

use cttm_embedded_token_server::{BackupSide, PrimarySide, start_backup, start_primary};
use nix::sys::signal::{SigSet, Signal};
use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage:
  embedded-token-server primary --service ADDR:PORT --interface IF --backup ADDR:PORT --key HEX
  embedded-token-server backup  --service ADDR:PORT --interface IF --listen ADDR:PORT --key HEX

--key is the replication link's pre-shared key: 64 hex digits, the same on both sides.
Run as root (NFQUEUE, TCP_REPAIR, address changes). SIGINT or SIGTERM stops a side.";

/// The command line, read.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Primary(PrimarySide),
    Backup(BackupSide),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("embedded-token-server: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    // Block the signals before any thread starts, so every thread inherits the mask and
    // this one takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("embedded-token-server: cannot block SIGINT/SIGTERM: {e}");
        return ExitCode::from(1);
    }
    let result = match command {
        Command::Primary(side) => start_primary(&side, None).map(|running| {
            let _ = signals.wait();
            match running.stop() {
                Ok(exit) => tracing::info!(
                    checkpoints = exit.checkpoints,
                    connections = exit.connections,
                    released = exit.released,
                    "primary side stopped"
                ),
                Err(e) => tracing::error!(error = %e, "primary agent"),
            }
        }),
        Command::Backup(side) => start_backup(&side, None).map(|running| {
            let _ = signals.wait();
            match running.stop() {
                Ok(exit) => tracing::info!(
                    resumed = exit.resumed.len(),
                    discarded_bytes = exit.discarded_bytes,
                    reset = exit.reset.len(),
                    "backup side stopped"
                ),
                Err(e) => tracing::error!(error = %e, "backup agent"),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded-token-server: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads the command line.
fn parse(args: &[String]) -> Result<Command, String> {
    let (role, rest) = args
        .split_first()
        .ok_or("a side is needed: primary or backup")?;
    if role != "primary" && role != "backup" {
        return Err(format!("unknown side {role:?}: primary or backup"));
    }
    let mut service = None;
    let mut interface = None;
    let mut peer = None;
    let mut key = None;
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match (role.as_str(), flag.as_str()) {
            (_, "--service") => service = Some(address(flag, value)?),
            (_, "--interface") => interface = Some(value.clone()),
            ("primary", "--backup") | ("backup", "--listen") => peer = Some(address(flag, value)?),
            (_, "--key") => key = Some(parse_key(value)?),
            _ => return Err(format!("unknown flag {flag} for {role}")),
        }
    }
    let missing = |what: &str| format!("{role} needs {what}");
    let service = service.ok_or_else(|| missing("--service"))?;
    let interface = interface.ok_or_else(|| missing("--interface"))?;
    let key = key.ok_or_else(|| missing("--key"))?;
    match role.as_str() {
        "primary" => Ok(Command::Primary(PrimarySide {
            service,
            interface,
            backup: peer.ok_or_else(|| missing("--backup"))?,
            key,
        })),
        "backup" => Ok(Command::Backup(BackupSide {
            service,
            interface,
            listen: peer.ok_or_else(|| missing("--listen"))?,
            key,
        })),
        _ => Err(format!("unknown side {role:?}: primary or backup")),
    }
}

fn address(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|e| format!("{flag} {value:?}: {e} (expected ADDRESS:PORT)"))
}

fn parse_key(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("--key must be 64 hex digits, got {} characters", hex.len());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn both_sides_read() {
        let key = "00".repeat(31) + "ff";
        let primary = parse(&args(&format!(
            "primary --service 198.18.0.10:7000 --interface eth0 --backup 198.18.0.3:7700 --key {key}"
        )))
        .unwrap();
        let mut expected = [0u8; 32];
        expected[31] = 0xff;
        assert_eq!(
            primary,
            Command::Primary(PrimarySide {
                service: "198.18.0.10:7000".parse().unwrap(),
                interface: "eth0".into(),
                backup: "198.18.0.3:7700".parse().unwrap(),
                key: expected,
            })
        );
        assert!(matches!(
            parse(&args(&format!(
                "backup --service [2001:db8::10]:7000 --interface eth0 --listen 198.18.0.3:7700 --key {key}"
            ))),
            Ok(Command::Backup(_))
        ));
    }

    #[test]
    fn bad_command_lines_are_clear_errors() {
        let key = "ab".repeat(32);
        for (line, wanted) in [
            ("", "a side is needed"),
            ("standby --key x", "unknown side"),
            ("primary --key x", "64 hex digits"),
            ("primary --service nowhere", "expected ADDRESS:PORT"),
            ("primary --service", "needs a value"),
            ("primary --listen 1.2.3.4:5", "unknown flag --listen"),
            ("backup --key 12", "64 hex digits"),
            ("backup --key ".to_string().as_str(), "needs a value"),
        ] {
            let e = parse(&args(line)).unwrap_err();
            assert!(e.contains(wanted), "{line:?}: {e}");
        }
        let e = parse(&args(&format!("primary --interface eth0 --key {key}"))).unwrap_err();
        assert!(e.contains("needs --service"), "{e}");
        let e = parse(&args(&format!(
            "frobnicate --service 1.2.3.4:5 --interface eth0 --key {key}"
        )))
        .unwrap_err();
        assert!(e.contains("unknown side"), "{e}");
    }
}
