//! The network lock of the takeover: while the connections are restored one by one, the
//! clients' segments to the services are dropped on arrival (an `iptables`/`ip6tables` rule
//! in this host's `INPUT` chain), as CRIU locks the network while it restores sockets.
//!
//! Without it, a client segment of a connection not restored yet meets the standby daemon's
//! listener (`0.0.0.0:port`), which answers it with a reset (RFC 9293 §3.10.7.1): the first
//! restored socket's window probe, or the neighbour solicitation it needs, carries the
//! service address and teaches the clients that the address lives here before every
//! connection is back. A dropped segment is retransmitted by the client (RFC 9293 §3.8.1),
//! and every restored socket probes its client again once the lock is released.
//!
//! Only segments without SYN are dropped: a new connection's SYN reaches the standby daemon
//! at once (it is a new connection after takeover either way).
//!
//! The rule carries a comment naming this process, so a lock left by a killed agent can be
//! told apart; the rule is removed when the [`NetworkLock`] is dropped (every exit path of
//! the takeover).

use std::io;
use std::net::SocketAddr;
use std::process::Command;

/// The dropping rules of the takeover, removed on drop.
#[derive(Debug)]
pub(crate) struct NetworkLock {
    /// Each rule's program and specification (after `-I INPUT` / `-D INPUT`).
    rules: Vec<(&'static str, Vec<String>)>,
}

impl NetworkLock {
    /// Drops every client segment (SYNs excepted) to `services` arriving at this host (the
    /// calling thread's network namespace) until the lock is dropped. A rule that cannot be
    /// installed is logged and skipped: the takeover goes on without it (some connections
    /// may then be reset while others are restored).
    pub(crate) fn engage(services: &[SocketAddr]) -> NetworkLock {
        let mut lock = NetworkLock { rules: Vec::new() };
        let comment = format!("cttm takeover lock (pid {})", std::process::id());
        for service in services {
            let program = if service.is_ipv4() {
                "iptables"
            } else {
                "ip6tables"
            };
            let spec: Vec<String> = [
                "-p",
                "tcp",
                "-d",
                &service.ip().to_string(),
                "--dport",
                &service.port().to_string(),
                "!",
                "--syn",
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            match run(program, "-I", &spec) {
                Ok(()) => lock.rules.push((program, spec)),
                Err(e) => tracing::error!(
                    %service,
                    error = %e,
                    "cannot lock the service's incoming segments during the takeover ({program}); clients of connections not restored yet may be reset: install iptables"
                ),
            }
        }
        if !lock.rules.is_empty() {
            tracing::debug!(
                rules = lock.rules.len(),
                "network locked: client segments dropped until every connection is restored"
            );
        }
        lock
    }

    /// Removes the rules (also done on drop).
    pub(crate) fn release(&mut self) {
        let released = !self.rules.is_empty();
        for (program, spec) in self.rules.drain(..) {
            if let Err(e) = run(program, "-D", &spec) {
                tracing::error!(
                    error = %e,
                    "cannot remove the takeover's network lock: remove the `{program} -A INPUT {}` rule by hand, clients are cut off until then",
                    spec.join(" ")
                );
            }
        }
        if released {
            tracing::debug!("network lock released");
        }
    }
}

impl Drop for NetworkLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// Runs `program -w 5 <action> INPUT <spec>` (waiting for the xtables lock at most 5 s).
fn run(program: &str, action: &str, spec: &[String]) -> io::Result<()> {
    let out = Command::new(program)
        .args(["-w", "5", action, "INPUT"])
        .args(spec)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {action} INPUT {}: {}",
            spec.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// In a network namespace of its own (`unshare(CLONE_NEWNET)` on a thread): while the
    /// lock is engaged a new connection's SYN is still answered, but an established
    /// connection's data does not arrive; after release it does.
    #[test]
    fn the_lock_drops_client_segments_but_not_syns_until_released() {
        if !nix::unistd::Uid::effective().is_root() {
            // CI runs as root: there the test must run.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root under CI"
            );
            eprintln!("skipped: needs root (a network namespace, iptables)");
            return;
        }
        let outcome = std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's network
            // namespace; this thread ends with the test and shares no sockets.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let service = listener.local_addr().unwrap();
            let mut client = TcpStream::connect_timeout(&service, Duration::from_secs(2))
                .expect("connect before the lock");
            let (mut server, _) = listener.accept().unwrap();
            let mut lock = NetworkLock::engage(&[service]);
            assert_eq!(lock.rules.len(), 1, "rule installed");
            // a new connection's SYN passes (the client gets the SYN-ACK)
            let _second = TcpStream::connect_timeout(&service, Duration::from_secs(2))
                .expect("SYNs pass the lock");
            server
                .set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            use std::io::{Read, Write};
            client.write_all(b"x").unwrap();
            let mut b = [0; 1];
            let e = server
                .read(&mut b)
                .expect_err("data is dropped while locked");
            assert!(matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ));
            lock.release();
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // the client retransmits (RTO) and the byte arrives
            server
                .read_exact(&mut b)
                .expect("data passes after release");
            assert_eq!(&b, b"x");
            let rules = Command::new("iptables")
                .args(["-S", "INPUT"])
                .output()
                .unwrap();
            assert!(!String::from_utf8_lossy(&rules.stdout).contains("cttm takeover lock"));
        })
        .join();
        assert!(outcome.is_ok(), "the lock test failed");
    }
}
