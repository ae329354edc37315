//! Network-namespace labs for real-kernel tests.
//!
//! A [`Lab`] owns a set of namespaces with names unique to this process, joined by veth pairs
//! to a bridge that lives in its own "switch" namespace: nothing is created in, or changed
//! in, the root namespace. Dropping the lab deletes every namespace (and with them their
//! interfaces and sockets), so cleanup happens on every exit path, panics included.
//! Namespaces left by a killed run (their owner process is gone) are removed by the next
//! [`Lab::new`].
//!
//! Addresses used by tests come from 198.18.0.0/15 and 2001:db8::/32 only.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "cttm";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether a real-kernel test may run here. Without root it prints why and returns false;
/// under `CI=true` a missing privilege is a failure, not a skip.
pub fn kernel_tests_enabled(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root (network namespaces, TCP_REPAIR); CI=true requires it to run"
    );
    eprintln!("{test}: skipped, needs root (network namespaces, TCP_REPAIR)");
    false
}

/// A failed lab command, with what was run and what it printed.
#[derive(Debug)]
pub struct LabError(pub String);

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        LabError(e.to_string())
    }
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LabError(format!("{program} {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One network namespace of a lab.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A `Command` that runs `program` inside the namespace, for long-running children.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str(), program]);
        c
    }

    /// Runs `f` on a thread that has joined this namespace, and returns its result. Sockets
    /// created by `f` stay in this namespace wherever they are used afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let file = File::open(self.path())?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| LabError(format!("setns: {e}")))?;
                Ok(f())
            })
            .join()
            .map_err(|_| LabError("namespace thread panicked".into()))?
        })
    }

    /// Spawns a thread that joins this namespace and runs `f` (for servers and clients that
    /// must run concurrently).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, LabError> {
        let file = File::open(self.path())?;
        Ok(std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                panic!("setns into lab namespace: {e}");
            }
            f()
        }))
    }
}

/// A set of namespaces joined to one bridge (and to any further networks added with
/// [`Lab::add_network`]).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    switch: Netns,
    hosts: Vec<Netns>,
    /// Bridges added by [`Lab::add_network`] (in the switch namespace).
    networks: Vec<String>,
    /// Interfaces plugged into those bridges by [`Lab::attach`].
    attachments: Vec<Attachment>,
}

/// One host interface plugged into an additional network.
#[derive(Debug, Clone)]
struct Attachment {
    /// The host namespace's name.
    host: String,
    /// The interface's name inside the host.
    interface: String,
    /// The veth end in the switch namespace (the switch port).
    port: String,
}

impl Lab {
    /// A new lab with an empty switch (a namespace holding bridge `br0`, link up).
    /// `tag` (a few letters) appears in namespace names to tell tests apart.
    pub fn new(tag: &str) -> Result<Lab, LabError> {
        remove_stale_namespaces();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}-{tag}-{}-{n}", std::process::id());
        let switch = Netns {
            name: format!("{prefix}-sw"),
        };
        run("ip", &["netns", "add", &switch.name])?;
        let mut lab = Lab {
            prefix,
            switch: switch.clone(),
            hosts: Vec::new(),
            networks: Vec::new(),
            attachments: Vec::new(),
        };
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        switch.ip(&["link", "set", "lo", "up"])?;
        lab.hosts.clear();
        Ok(lab)
    }

    /// The switch namespace (holds `br0` and the host ends `v<index>`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Adds a host namespace with loopback up and interface `eth0` plugged into the bridge,
    /// carrying `addresses` (CIDR strings, IPv4 or IPv6; IPv6 without duplicate address
    /// detection so it is usable at once).
    pub fn add_host(&mut self, name: &str, addresses: &[&str]) -> Result<Netns, LabError> {
        let host = Netns {
            name: format!("{}-{name}", self.prefix),
        };
        run("ip", &["netns", "add", &host.name])?;
        self.hosts.push(host.clone());
        let port = format!("v{}", self.hosts.len());
        self.switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
        ])?;
        self.switch.ip(&["link", "set", &port, "master", "br0"])?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        host.ip(&["link", "set", "lo", "up"])?;
        for a in addresses {
            if a.contains(':') {
                host.ip(&["-6", "addr", "add", a, "dev", "eth0", "nodad"])?;
            } else {
                host.ip(&["addr", "add", a, "dev", "eth0"])?;
            }
        }
        host.ip(&["link", "set", "eth0", "up"])?;
        Ok(host)
    }

    /// The switch port (in the switch namespace) of the `index`-th host (1-based).
    pub fn switch_port(index: usize) -> String {
        format!("v{index}")
    }

    /// Cuts a host off the bridge (its switch port goes down): nothing it sends arrives
    /// anywhere, as when its host crashes.
    pub fn cut(&self, host: &Netns) -> Result<(), LabError> {
        let index = self
            .hosts
            .iter()
            .position(|h| h.name == host.name)
            .ok_or_else(|| LabError("not a host of this lab".into()))?;
        self.switch
            .ip(&["link", "set", &Lab::switch_port(index + 1), "down"])?;
        Ok(())
    }

    /// Plugs a host back in.
    pub fn reconnect(&self, host: &Netns) -> Result<(), LabError> {
        let index = self
            .hosts
            .iter()
            .position(|h| h.name == host.name)
            .ok_or_else(|| LabError("not a host of this lab".into()))?;
        self.switch
            .ip(&["link", "set", &Lab::switch_port(index + 1), "up"])?;
        Ok(())
    }

    /// Adds a second (third, ...) network: a bridge named `bridge` in the switch namespace,
    /// link up, joined to nothing else (its own broadcast domain, e.g. a replication network
    /// between two hosts only). Plug hosts in with [`Lab::attach`].
    pub fn add_network(&mut self, bridge: &str) -> Result<(), LabError> {
        if bridge == "br0" || self.networks.iter().any(|n| n == bridge) {
            return Err(LabError(format!(
                "network {bridge} exists already: choose another bridge name"
            )));
        }
        self.switch.ip(&["link", "add", bridge, "type", "bridge"])?;
        self.networks.push(bridge.to_string());
        self.switch.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Plugs `host` into the network `bridge` (made by [`Lab::add_network`]) with a new
    /// interface named `interface` inside the host, carrying `addresses` (CIDR strings, as in
    /// [`Lab::add_host`]). The switch port is named `n<number>`.
    pub fn attach(
        &mut self,
        host: &Netns,
        bridge: &str,
        interface: &str,
        addresses: &[&str],
    ) -> Result<(), LabError> {
        if !self.networks.iter().any(|n| n == bridge) {
            return Err(LabError(format!(
                "no network {bridge} in this lab: call add_network first"
            )));
        }
        if !self.hosts.iter().any(|h| h.name == host.name) {
            return Err(LabError("not a host of this lab".into()));
        }
        let port = format!("n{}", self.attachments.len() + 1);
        self.switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", interface, "netns", &host.name,
        ])?;
        self.attachments.push(Attachment {
            host: host.name.clone(),
            interface: interface.to_string(),
            port: port.clone(),
        });
        self.switch.ip(&["link", "set", &port, "master", bridge])?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        for a in addresses {
            if a.contains(':') {
                host.ip(&["-6", "addr", "add", a, "dev", interface, "nodad"])?;
            } else {
                host.ip(&["addr", "add", a, "dev", interface])?;
            }
        }
        host.ip(&["link", "set", interface, "up"])?;
        Ok(())
    }

    /// The switch port of `host`'s `interface` plugged in by [`Lab::attach`].
    fn attachment_port(&self, host: &Netns, interface: &str) -> Result<&str, LabError> {
        self.attachments
            .iter()
            .find(|a| a.host == host.name && a.interface == interface)
            .map(|a| a.port.as_str())
            .ok_or_else(|| {
                LabError(format!(
                    "{interface} of {} is not attached to an added network",
                    host.name
                ))
            })
    }

    /// Cuts `host`'s `interface` (plugged in by [`Lab::attach`]) off its network: its switch
    /// port goes down, as when the host crashes. [`Lab::cut`] does the same for `eth0`.
    pub fn cut_attachment(&self, host: &Netns, interface: &str) -> Result<(), LabError> {
        let port = self.attachment_port(host, interface)?;
        self.switch.ip(&["link", "set", port, "down"])?;
        Ok(())
    }

    /// Plugs an interface cut by [`Lab::cut_attachment`] back in.
    pub fn reconnect_attachment(&self, host: &Netns, interface: &str) -> Result<(), LabError> {
        let port = self.attachment_port(host, interface)?;
        self.switch.ip(&["link", "set", port, "up"])?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = run("ip", &["netns", "del", &h.name]);
        }
    }
}

/// Deletes `cttm-*-<pid>-*` namespaces whose process no longer exists (a run killed before
/// its labs were dropped).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hosts_talk_over_the_bridge_and_the_lab_cleans_up() {
        if !kernel_tests_enabled("lab smoke test") {
            return;
        }
        let names;
        {
            let mut lab = Lab::new("smoke").expect("lab");
            let a = lab
                .add_host("a", &["198.18.0.1/24", "2001:db8::1/64"])
                .expect("host a");
            let b = lab
                .add_host("b", &["198.18.0.2/24", "2001:db8::2/64"])
                .expect("host b");
            names = vec![a.name().to_string(), b.name().to_string()];
            let listener = b
                .run(|| std::net::TcpListener::bind("[2001:db8::2]:7000").expect("bind"))
                .expect("in b");
            let server = std::thread::spawn(move || {
                use std::io::Read;
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).expect("read");
                buf
            });
            a.run(|| {
                use std::io::Write;
                let mut c = std::net::TcpStream::connect("[2001:db8::2]:7000").expect("connect");
                c.write_all(b"across the bridge").expect("write");
            })
            .expect("in a");
            assert_eq!(server.join().expect("server"), b"across the bridge");
            // IPv4 too: a listener in b is reachable from a only through the bridge
            let l4 = b
                .run(|| std::net::TcpListener::bind("198.18.0.2:7001").expect("bind v4"))
                .expect("in b");
            let peer = a
                .run(|| {
                    std::net::TcpStream::connect("198.18.0.2:7001")
                        .expect("connect v4")
                        .local_addr()
                })
                .expect("in a")
                .expect("local addr");
            let (_, from) = l4.accept().expect("accept v4");
            assert_eq!(from, peer);
            assert_eq!(from.ip().to_string(), "198.18.0.1");
        }
        let listed = run("ip", &["netns", "list"]).expect("list");
        for n in names {
            assert!(!listed.contains(&n), "namespace {n} left behind");
        }
    }

    /// Connects from `from` to `to` within `timeout`; whether it worked.
    fn connects(from: &Netns, to: std::net::SocketAddr, timeout: std::time::Duration) -> bool {
        from.run(move || std::net::TcpStream::connect_timeout(&to, timeout).is_ok())
            .expect("in the namespace")
    }

    #[test]
    fn an_added_network_joins_only_its_hosts_and_can_be_cut() {
        if !kernel_tests_enabled("added network test") {
            return;
        }
        use std::time::Duration;
        let mut lab = Lab::new("net2").expect("lab");
        let a = lab.add_host("a", &["198.18.0.1/24"]).expect("host a");
        let b = lab.add_host("b", &["198.18.0.2/24"]).expect("host b");
        let c = lab.add_host("c", &["198.18.0.3/24"]).expect("host c");
        lab.add_network("br1").expect("second network");
        assert!(lab.add_network("br1").is_err(), "a network added twice");
        lab.attach(&a, "br1", "eth1", &["198.19.0.1/24"])
            .expect("a on br1");
        lab.attach(&b, "br1", "eth1", &["198.19.0.2/24"])
            .expect("b on br1");
        assert!(lab.attach(&c, "br9", "eth1", &["198.19.0.3/24"]).is_err());
        // b listens on its address of the second network only.
        let listener = b
            .run(|| std::net::TcpListener::bind("198.19.0.2:7002").expect("bind"))
            .expect("in b");
        listener.set_nonblocking(true).expect("nonblocking");
        let target: std::net::SocketAddr = "198.19.0.2:7002".parse().expect("address");
        let quick = Duration::from_millis(500);
        assert!(
            connects(&a, target, Duration::from_secs(5)),
            "a reaches b on br1"
        );
        // c is not on the second network: no route there.
        assert!(!connects(&c, target, quick), "c reached the second network");
        // The connection went over eth1: b saw it from a's eth1 address.
        let (_, from) = listener.accept().expect("accept");
        assert_eq!(from.ip().to_string(), "198.19.0.1");
        lab.cut_attachment(&a, "eth1").expect("cut");
        assert!(!connects(&a, target, quick), "a reached b over a cut link");
        lab.reconnect_attachment(&a, "eth1").expect("reconnect");
        let back = (0..20).any(|_| connects(&a, target, Duration::from_secs(1)));
        assert!(back, "a reaches b again once reconnected");
        assert!(lab.cut_attachment(&c, "eth1").is_err(), "c has no eth1");
    }
}
