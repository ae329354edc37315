//! Command-line parsing (untrusted input: every mistake is a clear message, never a panic).

use cttm_restore::migrate::ServiceAddress;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub(crate) const USAGE: &str = "\
usage:
  cttm-migrate serve   --listen ADDR:PORT --handoff PEER:PORT [--interface IF] [--prefix-len N] [--admin ADDR:PORT]
  cttm-migrate receive --control ADDR:PORT --address ADDR/N [--interface IF]
  cttm-migrate client  --connect ADDR:PORT [--lines N] [--interval-ms MS]

serve    host A: an echo/counter service on the service address (already on IF, default eth0,
         with prefix length N, default 24 for IPv4 and 64 for IPv6). On SIGUSR1, or a line
         `migrate` on the admin port, every connection and the address move to the `receive`
         instance at PEER:PORT; then it exits.
receive  host B: waits on ADDR:PORT for one migration of the service address ADDR/N, claims it
         on IF, restores the connections, announces the address and serves them for ever.
client   sends N numbered lines (default 100), one every MS milliseconds (default 100), and
         checks that every answer's counter is right (it exits 1 at the first wrong answer).

IPv6 addresses: --listen [2001:db8::10]:9000, --address 2001:db8::10/64.
Needs root (CAP_NET_ADMIN, CAP_NET_RAW) for serve and receive.";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Print the usage.
    Help,
    /// Host A.
    Serve {
        listen: SocketAddr,
        handoff: SocketAddr,
        interface: String,
        prefix_len: u8,
        admin: Option<SocketAddr>,
    },
    /// Host B.
    Receive {
        control: SocketAddr,
        interface: String,
        service: ServiceAddress,
    },
    /// The checking client.
    Client {
        connect: SocketAddr,
        lines: u64,
        interval: Duration,
    },
}

/// Collects `--name value` pairs after the subcommand.
struct Flags<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Flags<'a> {
    fn parse(arguments: &'a [String], known: &[&str]) -> Result<Flags<'a>, String> {
        let mut pairs = Vec::new();
        let mut rest = arguments.iter();
        while let Some(flag) = rest.next() {
            if !known.contains(&flag.as_str()) {
                return Err(format!("unknown argument {flag:?}"));
            }
            let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if pairs.iter().any(|(f, _)| *f == flag.as_str()) {
                return Err(format!("{flag} given twice"));
            }
            pairs.push((flag.as_str(), value.as_str()));
        }
        Ok(Flags { pairs })
    }

    fn get(&self, flag: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v)
    }

    fn required(&self, flag: &str) -> Result<&'a str, String> {
        self.get(flag).ok_or_else(|| format!("{flag} is required"))
    }
}

fn socket_address(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not ADDR:PORT (IPv6: [ADDR]:PORT)"))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not a valid number"))
}

fn prefix_for(flag: &str, address: IpAddr, value: Option<&str>) -> Result<u8, String> {
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match value {
        Some(v) => number::<u8>(flag, v)?,
        None if address.is_ipv4() => 24,
        None => 64,
    };
    if prefix > max {
        return Err(format!(
            "{flag} /{prefix} is too long for {address} (at most /{max})"
        ));
    }
    Ok(prefix)
}

fn service_address(value: &str) -> Result<ServiceAddress, String> {
    let (address, prefix) = value
        .split_once('/')
        .ok_or_else(|| format!("--address {value:?} is not ADDR/PREFIX (e.g. 198.18.0.10/24)"))?;
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("--address {value:?}: {address:?} is not an IP address"))?;
    let prefix_len = prefix_for("--address", address, Some(prefix))?;
    Ok(ServiceAddress {
        address,
        prefix_len,
    })
}

/// Parses the arguments after the program name.
pub(crate) fn parse(arguments: &[String]) -> Result<Command, String> {
    let Some((subcommand, rest)) = arguments.split_first() else {
        return Err("a subcommand is required".into());
    };
    match subcommand.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "serve" => {
            let flags = Flags::parse(
                rest,
                &[
                    "--listen",
                    "--handoff",
                    "--interface",
                    "--prefix-len",
                    "--admin",
                ],
            )?;
            let listen = socket_address("--listen", flags.required("--listen")?)?;
            let handoff = socket_address("--handoff", flags.required("--handoff")?)?;
            let prefix_len = prefix_for("--prefix-len", listen.ip(), flags.get("--prefix-len"))?;
            let admin = flags
                .get("--admin")
                .map(|v| socket_address("--admin", v))
                .transpose()?;
            let interface = flags.get("--interface").unwrap_or("eth0").to_string();
            Ok(Command::Serve {
                listen,
                handoff,
                interface,
                prefix_len,
                admin,
            })
        }
        "receive" => {
            let flags = Flags::parse(rest, &["--control", "--interface", "--address"])?;
            let control = socket_address("--control", flags.required("--control")?)?;
            let service = service_address(flags.required("--address")?)?;
            let interface = flags.get("--interface").unwrap_or("eth0").to_string();
            Ok(Command::Receive {
                control,
                interface,
                service,
            })
        }
        "client" => {
            let flags = Flags::parse(rest, &["--connect", "--lines", "--interval-ms"])?;
            let connect = socket_address("--connect", flags.required("--connect")?)?;
            let lines = flags
                .get("--lines")
                .map(|v| number("--lines", v))
                .transpose()?
                .unwrap_or(100);
            let interval_ms: u64 = flags
                .get("--interval-ms")
                .map(|v| number("--interval-ms", v))
                .transpose()?
                .unwrap_or(100);
            Ok(Command::Client {
                connect,
                lines,
                interval: Duration::from_millis(interval_ms),
            })
        }
        other => Err(format!("unknown subcommand {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn serve_and_receive_parse_with_defaults() {
        assert_eq!(
            parse(&args(
                "serve --listen 198.18.0.10:9000 --handoff 198.18.0.3:9100"
            )),
            Ok(Command::Serve {
                listen: "198.18.0.10:9000".parse().unwrap(),
                handoff: "198.18.0.3:9100".parse().unwrap(),
                interface: "eth0".into(),
                prefix_len: 24,
                admin: None,
            })
        );
        assert_eq!(
            parse(&args(
                "receive --control [2001:db8::3]:9100 --address 2001:db8::10/64 --interface e1"
            )),
            Ok(Command::Receive {
                control: "[2001:db8::3]:9100".parse().unwrap(),
                interface: "e1".into(),
                service: ServiceAddress {
                    address: "2001:db8::10".parse().unwrap(),
                    prefix_len: 64
                },
            })
        );
    }

    #[test]
    fn mistakes_are_messages_not_panics() {
        for bad in [
            "",
            "fly",
            "serve --listen 198.18.0.10:9000",
            "serve --listen nowhere --handoff 198.18.0.3:9100",
            "serve --listen 198.18.0.10:9000 --handoff 198.18.0.3:9100 --prefix-len 33",
            "receive --control 198.18.0.3:9100 --address 198.18.0.10",
            "receive --control 198.18.0.3:9100 --address 198.18.0.10/99",
            "client --connect 198.18.0.10:9000 --lines many",
            "client --connect 198.18.0.10:9000 --connect 198.18.0.10:9001",
            "client --connect",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
