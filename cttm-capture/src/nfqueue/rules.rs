//! The iptables rules that send the service's outgoing segments (and, on request, its
//! incoming ones) to the queue.
//!
//! Layout, per address family with at least one service endpoint (`iptables` for IPv4,
//! `ip6tables` for IPv6; this kernel has no nft `queue` statement, so the xtables `NFQUEUE`
//! target is used):
//!
//! ```text
//! -N CTTM-Q<n>
//! -A CTTM-Q<n> -m mark --mark <bypass> -j RETURN        # replication traffic is never held
//! -A CTTM-Q<n> -p tcp -s <addr> --sport <port> -j NFQUEUE --queue-num <n> [--queue-bypass]
//! -I OUTPUT 1 -j CTTM-Q<n>
//! # with incoming segments too (QueueDirections::Both):
//! -N CTTM-Q<n>-IN
//! -A CTTM-Q<n>-IN -p tcp -d <addr> --dport <port> -j NFQUEUE --queue-num <n> [--queue-bypass]
//! -I INPUT 1 -j CTTM-Q<n>-IN
//! ```
//!
//! Incoming segments are queued in INPUT, after routing decided they are for this host and
//! before the socket sees them: the tracker learns a client's bytes before the server can
//! acknowledge them, so the acknowledgement (queued in OUTPUT) always finds them tracked.
//!
//! The dedicated chains named after the queue make removal exact: delete the jumps, flush and
//! delete the chains; nothing else in the firewall is touched. The rules are installed in the
//! network namespace of the calling thread (a child process inherits the namespace of the
//! thread that spawns it), and that namespace is remembered: removal enters it again from a
//! helper thread, so dropping the rules from any thread never touches another namespace.

use cttm_core::ServiceSet;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use thiserror::Error;

/// Why the queue's firewall rules could not be installed or removed.
#[derive(Debug, Error)]
pub enum RuleError {
    /// The `iptables`/`ip6tables` command is not installed.
    #[error("{program} not found: install it (Debian/Ubuntu: apt-get install -y iptables)")]
    MissingTool {
        /// The missing program.
        program: &'static str,
    },
    /// A rule command failed.
    #[error("`{command}` failed: {stderr} (CTTM needs CAP_NET_ADMIN in its network namespace)")]
    CommandFailed {
        /// The command line.
        command: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The network namespace of the rules could not be found or entered.
    #[error("cannot enter the network namespace the rules were installed in: {0}")]
    Namespace(#[source] io::Error),
}

/// The two address families and their rule tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Installed rules of one queue; removed by [`QueueRules::remove`] or on drop.
#[derive(Debug)]
pub struct QueueRules {
    chain: String,
    families: Vec<Family>,
    namespace: File,
}

/// The chain CTTM uses for `queue`.
pub fn chain_name(queue: u16) -> String {
    format!("CTTM-Q{queue}")
}

fn run(family: Family, args: &[&str]) -> Result<(), RuleError> {
    let program = family.program();
    let mut all = vec!["-w", "5"];
    all.extend_from_slice(args);
    let out = Command::new(program)
        .args(&all)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RuleError::MissingTool { program },
            _ => RuleError::CommandFailed {
                command: format!("{program} {}", all.join(" ")),
                stderr: e.to_string(),
            },
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuleError::CommandFailed {
            command: format!("{program} {}", all.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Removes the jump and the chain of `family`, ignoring what is already gone. Bounded: a jump
/// inserted several times (by a crashed earlier run) is deleted at most 16 times.
fn remove_family(family: Family, chain: &str) -> Result<(), RuleError> {
    let incoming = incoming_chain_name(chain);
    for (hook, chain) in [("OUTPUT", chain), ("INPUT", incoming.as_str())] {
        for _ in 0..16 {
            if run(family, &["-D", hook, "-j", chain]).is_err() {
                break;
            }
        }
        let exists = run(family, &["-S", chain]).is_ok();
        if exists {
            run(family, &["-F", chain])?;
            run(family, &["-X", chain])?;
        }
    }
    Ok(())
}

/// The chain of the incoming rules that goes with the outgoing chain `chain`.
fn incoming_chain_name(chain: &str) -> String {
    format!("{chain}-IN")
}

/// Which of the service's segments are queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueueDirections {
    /// Only the service's outgoing segments (OUTPUT, `--sport`): the output-commit point.
    #[default]
    Outgoing,
    /// Outgoing segments and the segments the service receives (INPUT, `--dport`), so one
    /// queue sees the whole conversation in the order the host handles it.
    Both,
}

impl QueueRules {
    /// Installs the rules for `services` in the calling thread's network namespace. A chain
    /// of the same name left by a crashed run is removed first (the queue number is bound by
    /// this process already, so no live process owns it).
    pub fn install(
        queue: u16,
        services: &ServiceSet,
        bypass_mark: u32,
        queue_bypass: bool,
    ) -> Result<QueueRules, RuleError> {
        QueueRules::install_directions(
            queue,
            services,
            bypass_mark,
            queue_bypass,
            QueueDirections::Outgoing,
        )
    }

    /// Like [`QueueRules::install`], for the segments `directions` names. Incoming segments
    /// are queued in their own chain (`CTTM-Q<n>-IN`, jumped to from INPUT); the bypass mark
    /// applies to outgoing segments only (marks are local to the host).
    pub fn install_directions(
        queue: u16,
        services: &ServiceSet,
        bypass_mark: u32,
        queue_bypass: bool,
        directions: QueueDirections,
    ) -> Result<QueueRules, RuleError> {
        let namespace = File::open("/proc/thread-self/ns/net").map_err(RuleError::Namespace)?;
        let chain = chain_name(queue);
        let mut rules = QueueRules {
            chain: chain.clone(),
            families: Vec::new(),
            namespace,
        };
        let mark = format!("{bypass_mark:#x}");
        let queue_num = queue.to_string();
        for family in [Family::V4, Family::V6] {
            let endpoints: Vec<_> = services
                .endpoints()
                .iter()
                .filter(|e| {
                    matches!(
                        (family, e.addr),
                        (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                    )
                })
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            remove_family(family, &chain)?;
            run(family, &["-N", &chain])?;
            rules.families.push(family);
            run(
                family,
                &["-A", &chain, "-m", "mark", "--mark", &mark, "-j", "RETURN"],
            )?;
            for e in &endpoints {
                let port = e.port.to_string();
                let addr = e.addr.to_string();
                let mut args = vec!["-A", chain.as_str(), "-p", "tcp"];
                if !e.addr.is_unspecified() {
                    args.extend_from_slice(&["-s", &addr]);
                }
                args.extend_from_slice(&[
                    "--sport",
                    &port,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue_num,
                ]);
                if queue_bypass {
                    args.push("--queue-bypass");
                }
                run(family, &args)?;
            }
            run(family, &["-I", "OUTPUT", "1", "-j", &chain])?;
            if directions == QueueDirections::Both {
                let incoming = incoming_chain_name(&chain);
                run(family, &["-N", &incoming])?;
                for e in &endpoints {
                    let port = e.port.to_string();
                    let addr = e.addr.to_string();
                    let mut args = vec!["-A", incoming.as_str(), "-p", "tcp"];
                    if !e.addr.is_unspecified() {
                        args.extend_from_slice(&["-d", &addr]);
                    }
                    args.extend_from_slice(&[
                        "--dport",
                        &port,
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        &queue_num,
                    ]);
                    if queue_bypass {
                        args.push("--queue-bypass");
                    }
                    run(family, &args)?;
                }
                run(family, &["-I", "INPUT", "1", "-j", &incoming])?;
            }
        }
        Ok(rules)
    }

    /// The chain holding the rules.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Removes the rules from the namespace they were installed in. Idempotent.
    pub fn remove(&mut self) -> Result<(), RuleError> {
        if self.families.is_empty() {
            return Ok(());
        }
        let families = self.families.clone();
        let chain = self.chain.clone();
        let namespace = &self.namespace;
        let result = std::thread::scope(|s| {
            s.spawn(move || {
                enter_namespace(namespace)?;
                let mut first_error = None;
                for family in families {
                    if let Err(e) = remove_family(family, &chain) {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(RuleError::Namespace(io::Error::other(
                    "rule removal thread panicked",
                )))
            })
        });
        if result.is_ok() {
            self.families.clear();
        }
        result
    }
}

/// Moves the calling thread (only it) into the network namespace `namespace` refers to.
fn enter_namespace(namespace: &File) -> Result<(), RuleError> {
    // SAFETY: setns(2) on a valid namespace descriptor; it changes only the calling thread,
    // a helper thread that ends right after the rule commands.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(RuleError::Namespace(io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for QueueRules {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `remove` is the checked path.
        let _ = self.remove();
    }
}
