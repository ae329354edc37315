//! The `kvd` command line, shared by the `kvd` binary and by `cttmd kvd` (the demo's
//! fallback when no `kvd` binary is built).

use crate::{Server, ServerOptions};
use std::net::SocketAddr;
use std::process::ExitCode;

/// The usage text.
pub const USAGE: &str = "\
usage: kvd [--listen ADDR:PORT]... [--diverge]

A line-oriented key-value session server whose replies depend only on the bytes received on
each connection (PING, SET, GET, DEL, INCR, COUNT, ECHO, STREAM n seed, QUIT).

  --listen ADDR:PORT  address to serve, may be repeated (default 127.0.0.1:7000;
                      IPv6: [::1]:7000; all addresses: 0.0.0.0:7000)
  --diverge           append the process id and the time to every reply (non-deterministic,
                      for divergence tests)
  --help              this text";

/// The command line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// Serve these addresses.
    Serve {
        /// The addresses (at least one).
        listen: Vec<SocketAddr>,
        /// How to serve.
        options: ServerOptions,
    },
}

/// Parses the arguments (without the program name); the error says what is wrong.
pub fn parse(arguments: &[String]) -> Result<Command, String> {
    let mut listen = Vec::new();
    let mut options = ServerOptions::default();
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        let (flag, inline) = match argument.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (argument.as_str(), None),
        };
        match flag {
            "--help" | "-h" => return Ok(Command::Help),
            "--diverge" if inline.is_none() => options.diverge = true,
            "--listen" => {
                let value = match inline {
                    Some(v) => v,
                    None => rest
                        .next()
                        .ok_or("--listen needs a value, e.g. --listen 0.0.0.0:7000")?
                        .clone(),
                };
                let address = value.parse().map_err(|_| {
                    format!("--listen {value:?} is not ADDR:PORT (e.g. 0.0.0.0:7000, [::]:7000)")
                })?;
                listen.push(address);
            }
            _ => return Err(format!("unknown argument {argument:?}")),
        }
    }
    if listen.is_empty() {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 7000)));
    }
    Ok(Command::Serve { listen, options })
}

/// Runs `kvd` with these arguments (without the program name): serves until the process
/// ends. Exit status 2 for bad arguments, 1 if an address cannot be bound.
pub fn main(arguments: &[String]) -> ExitCode {
    match parse(arguments) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Serve { listen, options }) => match Server::start(&listen, options) {
            Ok(server) => {
                for a in server.addresses() {
                    eprintln!(
                        "kvd: serving {a}{}",
                        if options.diverge { " (diverging)" } else { "" }
                    );
                }
                server.wait();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvd: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("kvd: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listen_is_repeatable_and_defaults_to_loopback() {
        assert_eq!(
            parse(&args(&[])),
            Ok(Command::Serve {
                listen: vec!["127.0.0.1:7000".parse().unwrap()],
                options: ServerOptions::default()
            })
        );
        assert_eq!(
            parse(&args(&[
                "--listen",
                "0.0.0.0:1",
                "--listen=[::]:2",
                "--diverge"
            ])),
            Ok(Command::Serve {
                listen: vec!["0.0.0.0:1".parse().unwrap(), "[::]:2".parse().unwrap()],
                options: ServerOptions { diverge: true }
            })
        );
        assert_eq!(parse(&args(&["--help"])), Ok(Command::Help));
    }

    #[test]
    fn bad_arguments_are_explained() {
        assert!(
            parse(&args(&["--listen"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(&args(&["--listen", "x"]))
                .unwrap_err()
                .contains("not ADDR:PORT")
        );
        assert!(
            parse(&args(&["--frob"]))
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(
            parse(&args(&["--diverge=1"]))
                .unwrap_err()
                .contains("unknown argument")
        );
    }
}
