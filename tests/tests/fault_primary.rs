//! The primary agent under faults, with the real agents in a [`FailoverLab`] (sync mode):
//!
//! - `backup_death_degrades_and_the_service_continues`: clients exchange checked kvd
//!   requests without pause; the backup agent is stopped. The primary's view goes
//!   `degraded` (counted once, with an alert), its held packets drop to 0, and every client
//!   request keeps being answered correctly throughout. A new backup agent starts: the view
//!   returns to `sync`, and a connection opened afterwards is protected (the backup holds
//!   it). The agent's pcapng capture file holds the service's segments, the requests of
//!   that connection among them.
//! - `a_returning_primary_does_not_serve`: the primary crashes, the backup takes over; the
//!   primary host comes back (its port reconnected, the service address still on its
//!   `eth0`, none of its old sockets: a crashed host has none) and a new primary agent
//!   starts there. It finds the address served by the backup: its view becomes
//!   `non-serving` with the alert, the address is gone from its `eth0`, the restored
//!   connections keep working, a new connection works and lands on the backup, and a
//!   `rejoin` is refused while the backup serves. Once the backup is retired (agent
//!   stopped, address removed), a `rejoin` claims the address and the primary serves again.
//! - `a_partitioned_primary_stops_serving_when_it_finds_the_address_served_elsewhere`: the
//!   primary host is cut off both networks while its agent and daemon keep running; the
//!   backup takes over. The service network heals (the replication network does not, so
//!   the backup stays silent for the primary): the primary's probes find the backup serving
//!   the address, and it demotes itself to `non-serving` (address removed, queue rules
//!   gone); the restored connections are undisturbed and new ones land on the backup.
//!
//! Every socket has timeouts, every loop a deadline and a count bound. Stalls are printed,
//! never asserted.

/// The shared rig (this file uses only part of it).
#[allow(dead_code)]
mod failover_agents;

use cttm_capture::pcap::PcapFileReader;
use cttm_core::ConnectionId;
use cttm_core::wire::parse_frame;
use cttm_tests::failover_lab::{
    FailoverLab, KvClient, SERVICE_PORT, ServiceFamily, kv_text, wait_until,
};
use cttm_tests::lab::{Netns, kernel_tests_enabled};
use cttm_tests::temp_dir::TempDir;
use cttmd::backup::run_backup_observed;
use cttmd::observe::{AgentRole, AgentView, CommitState, Observer, ProtectionState};
use cttmd::options::{CommitMode, PrimaryOptions};
use cttmd::primary::{PrimaryMonitor, run_primary_monitored};
use failover_agents::{crash, finish, start_observed};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the primary waits for an unreachable backup before it degrades.
const DEGRADE_AFTER: Duration = Duration::from_millis(300);
/// The longest the whole traffic of a test may run.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// The most rounds one client makes.
const MAX_ROUNDS: usize = 100_000;
/// Client connections exchanging requests.
const CLIENTS: usize = 4;

/// The primary agent's options as the rig gives them, degrading after [`DEGRADE_AFTER`].
fn primary_options(lab: &FailoverLab, queue: u16) -> PrimaryOptions {
    PrimaryOptions {
        degrade_after: DEGRADE_AFTER,
        ..failover_agents::primary_options(lab, CommitMode::Sync, queue)
    }
}

/// Client `c`'s new kvd connection after 10 checked `ECHO` rounds.
fn warmed_client(lab: &FailoverLab, c: usize) -> KvClient {
    let service = lab.service();
    let mut client = lab
        .client
        .run(|| KvClient::connect(service, Duration::from_secs(5)))
        .expect("in the client namespace")
        .expect("connect");
    for round in 0..10 {
        client
            .request(&format!("ECHO {c} {round} {}", kv_text(round, 50)))
            .expect("answered before the fault");
    }
    client
}

/// A new kvd connection from the client host that answered `PING`, and checked to be
/// served by `host` (`ss` lists it there); `what` names it in failures.
fn new_client_served_by(lab: &FailoverLab, host: &Netns, what: &str) -> KvClient {
    let service = lab.service();
    let mut client = lab
        .client
        .run(|| KvClient::connect(service, Duration::from_secs(5)))
        .expect("in the client namespace")
        .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    client
        .request("PING")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let served = service_connections(host);
    assert!(
        lists_client(&served, client.local().expect("local address")),
        "{what}: served by the expected host: {served}"
    );
    client
}

/// True when `host`'s `eth0` carries `address`.
fn has_address(host: &Netns, address: &str) -> bool {
    host.exec("ip", &["-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr")
        .contains(&format!(" {address}/"))
}

/// Established TCP connections of `host` whose local port is the service port (`ss`).
fn service_connections(host: &Netns) -> String {
    host.exec(
        "ss",
        &["-Htn", "state", "established", "sport", "=", ":7000"],
    )
    .expect("ss")
}

/// True when `ss` output lists a connection from `client` (its peer column).
fn lists_client(ss: &str, client: std::net::SocketAddr) -> bool {
    // kvd listens on [::]: IPv4 peers show as [::ffff:a.b.c.d]:port.
    let mapped = format!("[::ffff:{}]:{}", client.ip(), client.port());
    let plain = client.to_string();
    ss.lines()
        .filter_map(|line| line.split_whitespace().last())
        .any(|peer| peer == plain || peer == mapped)
}

/// Clients that exchange checked requests until told to stop.
struct Workload {
    stop: Arc<AtomicBool>,
    rounds: Arc<Vec<AtomicUsize>>,
    threads: Vec<JoinHandle<Result<Duration, String>>>,
}

impl Workload {
    /// `CLIENTS` connections from `client` to `service`, each making rounds of `ECHO`,
    /// `INCR` and `SET`/`GET` (every answer checked by the oracle) until stopped, then
    /// `COUNT` and `QUIT`. Each returns its longest stall.
    fn start(client: &Netns, service: std::net::SocketAddr) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds: Arc<Vec<AtomicUsize>> =
            Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
        let deadline = Instant::now() + TEST_LIMIT;
        let threads = (0..CLIENTS)
            .map(|c| {
                let (stop, rounds) = (stop.clone(), rounds.clone());
                client
                    .spawn(move || -> Result<Duration, String> {
                        let mut client = KvClient::connect(service, Duration::from_secs(5))
                            .map_err(|e| format!("client {c}: connect: {e}"))?;
                        let mut round = 0usize;
                        while !stop.load(Ordering::SeqCst) && round < MAX_ROUNDS {
                            if Instant::now() > deadline {
                                return Err(format!("client {c}: out of time at round {round}"));
                            }
                            let line = kv_text((c * MAX_ROUNDS + round) as u64, 20 + round % 200);
                            client
                                .request(&format!("ECHO {c} {round} {line}"))
                                .and_then(|()| client.request(&format!("INCR total {round}")))
                                .and_then(|()| {
                                    client.request(&format!("SET k{} {round}", round % 3))
                                })
                                .and_then(|()| client.request(&format!("GET k{}", round % 3)))
                                .map_err(|e| format!("client {c}, round {round}: {e}"))?;
                            round += 1;
                            rounds[c].store(round, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        client
                            .finish()
                            .map_err(|e| format!("client {c}, closing after {round} rounds: {e}"))
                    })
                    .expect("client thread")
            })
            .collect();
        Workload {
            stop,
            rounds,
            threads,
        }
    }

    /// The rounds each client has completed.
    fn rounds(&self) -> Vec<usize> {
        self.rounds
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect()
    }

    /// Waits (at most `limit`) until every client completed `more` rounds beyond `from`.
    fn advance(&self, from: &[usize], more: usize, limit: Duration) -> bool {
        wait_until(limit, || {
            self.rounds()
                .iter()
                .zip(from)
                .all(|(now, before)| *now >= before + more)
        })
    }

    /// Stops the clients; each one's result.
    fn finish(self) -> Vec<Result<Duration, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    }
}

/// The segments of the pcapng file to or from the service port, and their payloads
/// concatenated (client's and server's).
fn captured_service_payloads(path: &Path) -> (usize, Vec<u8>) {
    let mut reader = PcapFileReader::open(path).expect("open the capture file");
    let (mut segments, mut payloads) = (0usize, Vec::new());
    for _ in 0..10_000_000 {
        let Some(frame) = reader.next_frame().expect("read the capture file") else {
            break;
        };
        let Ok(segment) = parse_frame(frame.link, frame.data) else {
            continue;
        };
        if segment.src.port() == SERVICE_PORT || segment.dst.port() == SERVICE_PORT {
            segments += 1;
            payloads.extend_from_slice(segment.payload);
        }
    }
    (segments, payloads)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn backup_death_degrades_and_the_service_continues() {
    if !kernel_tests_enabled("backup_death_degrades_and_the_service_continues") {
        return;
    }
    let files = TempDir::new("fault-primary-degrade");
    let capture_file = files.path("primary.pcapng");
    let lab = FailoverLab::new("fdd", ServiceFamily::V4).expect("lab");
    let (mut rig, watchers) = {
        let capture_file = capture_file.clone();
        start_observed(lab, CommitMode::Sync, 70, move |primary, _| {
            primary.degrade_after = DEGRADE_AFTER;
            primary.capture_file = Some(capture_file);
        })
        .expect("agents")
    };
    let view = || watchers.primary.observer().view();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = view();
            v.role == AgentRole::Primary && v.mode == CommitState::Sync && v.link_up
        }),
        "the primary runs in sync mode: {:?}",
        view()
    );

    let service = rig.lab.service();
    let workload = Workload::start(&rig.lab.client, service);
    assert!(
        workload.advance(&[0; CLIENTS], 20, Duration::from_secs(30)),
        "the clients got under way: {:?}",
        workload.rounds()
    );
    assert!(
        watchers.primary.status().is_some_and(|s| s.stats.held > 0),
        "sync mode held the answers"
    );

    // The backup dies.
    let stopped_at = Instant::now();
    let backup_exit = rig.stop_backup_agent().expect("the backup agent stopped");
    backup_exit.expect("the backup agent ran without error");
    let degraded = wait_until(Duration::from_secs(10), || {
        view().mode == CommitState::Degraded
    });
    println!(
        "degraded {:?} after the backup stopped (degrade_after {DEGRADE_AFTER:?})",
        stopped_at.elapsed()
    );
    assert!(degraded, "the primary degrades: {:?}", view());
    let v = view();
    assert_eq!(v.counters.degradations, 1, "one degradation: {v:?}");
    assert!(
        v.alerts.iter().any(|a| a.contains("degraded")),
        "an alert says so: {:?}",
        v.alerts
    );
    // Nothing stays held; the service goes on.
    let at_degrade = workload.rounds();
    assert!(
        wait_until(Duration::from_secs(10), || {
            view().held_packets == 0
                && watchers
                    .primary
                    .status()
                    .is_some_and(|s| s.held_packets == 0)
        }),
        "held packets drop to 0: {:?}",
        watchers.primary.status().map(|s| s.held_packets)
    );
    assert!(
        workload.advance(&at_degrade, 30, Duration::from_secs(30)),
        "every client keeps being answered while degraded: {:?} -> {:?}",
        at_degrade,
        workload.rounds()
    );
    assert_eq!(
        view().mode,
        CommitState::Degraded,
        "still degraded without a backup"
    );

    // A new backup agent: the primary resynchronises and holds again.
    let new_backup = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
    let agent = {
        let (options, observer) = (
            failover_agents::backup_options(&rig.lab),
            new_backup.clone(),
        );
        rig.lab
            .spawn_agent(&rig.lab.backup, move |stop| {
                run_backup_observed(options, stop, observer)
            })
            .expect("start a new backup agent")
    };
    rig.replace_backup_agent(agent);
    let started = Instant::now();
    let resynchronised = wait_until(Duration::from_secs(30), || {
        let v = view();
        v.mode == CommitState::Sync && v.link_up
    });
    println!(
        "sync again {:?} after the new backup started",
        started.elapsed()
    );
    assert!(resynchronised, "the primary returns to sync: {:?}", view());
    let v = view();
    assert_eq!(v.counters.degradations, 1);
    assert!(
        !v.alerts.iter().any(|a| a.contains("degraded")),
        "the degraded alert is gone: {:?}",
        v.alerts
    );

    // A connection opened now is protected from its handshake on.
    let marker = format!("ECHO after-resync {}", kv_text(77, 64));
    let mut fresh = rig
        .lab
        .client
        .run(|| KvClient::connect(service, Duration::from_secs(5)))
        .expect("in the client namespace")
        .expect("connect after the resynchronisation");
    fresh.request(&marker).expect("answered");
    let id = ConnectionId {
        client: fresh.local().expect("local address"),
        server: service,
    };
    let protected = wait_until(Duration::from_secs(10), || {
        let status_protected = watchers.primary.status().is_some_and(|s| {
            s.connection(&id)
                .is_some_and(|c| !c.backup_holds_nothing() && c.unsafe_reason.is_none())
        });
        let view_protected = view()
            .connections
            .iter()
            .any(|c| c.client == id.client && c.state == ProtectionState::Protected);
        status_protected && view_protected
    });
    assert!(
        protected,
        "the new connection is protected: {:?}",
        watchers
            .primary
            .status()
            .and_then(|s| s.connection(&id).copied())
    );
    fresh.request("INCR fresh 5").expect("answered");
    fresh.finish().expect("the new connection completes");

    let at_resync = workload.rounds();
    assert!(
        workload.advance(&at_resync, 10, Duration::from_secs(30)),
        "the clients go on in sync mode"
    );
    let results = workload.finish();
    let stalls: Vec<Duration> = results
        .iter()
        .map(|r| r.clone().expect("every client request answered correctly"))
        .collect();
    println!(
        "longest client stall: {:?}",
        stalls.iter().max().copied().unwrap_or_default()
    );

    // Stop the primary (the crash is the rig's way to stop it; every client is done, the
    // backup takes over an empty service).
    crash(&mut rig).expect("stop the primary");
    let final_status = watchers.primary.status().expect("final status");
    assert_eq!(final_status.stats.degradations, 1);
    assert_eq!(
        final_status.stats.released + final_status.stats.released_unprotected,
        final_status.stats.held,
        "every held packet left"
    );
    let _ = finish(rig);

    // The capture file has the service's segments, the new connection's request among them.
    let (segments, payloads) = captured_service_payloads(&capture_file);
    println!("capture file: {segments} service segments");
    assert!(
        segments > 100,
        "the capture file holds the service segments"
    );
    assert!(
        contains(&payloads, marker.as_bytes()),
        "the capture file holds the new connection's request"
    );
    assert!(
        contains(&payloads, b"INCR total ") && contains(&payloads, b"COUNT\n"),
        "and the clients' other requests"
    );
}

#[test]
fn a_returning_primary_does_not_serve() {
    if !kernel_tests_enabled("a_returning_primary_does_not_serve") {
        return;
    }
    let lab = FailoverLab::new("fdr", ServiceFamily::V4).expect("lab");
    let (mut rig, watchers) = start_observed(lab, CommitMode::Sync, 71, |_, _| {}).expect("agents");
    let service = rig.lab.service();
    let service_ip = service.ip().to_string();
    assert!(has_address(&rig.lab.primary, &service_ip));

    // Connections with traffic before the crash; they stay open across it.
    let mut clients: Vec<KvClient> = (0..CLIENTS)
        .map(|c| {
            let mut client = warmed_client(&rig.lab, c);
            client.request(&format!("SET mine {c}")).expect("answered");
            client
        })
        .collect();
    let ids: Vec<ConnectionId> = clients
        .iter()
        .map(|c| ConnectionId {
            client: c.local().expect("local address"),
            server: service,
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            watchers.primary.status().is_some_and(|s| {
                ids.iter()
                    .all(|id| s.connection(id).is_some_and(|c| !c.is_at_risk()))
            })
        }),
        "the backup holds every connection before the crash"
    );

    crash(&mut rig).expect("crash the primary");
    assert!(
        wait_until(Duration::from_secs(20), || has_address(
            &rig.lab.backup,
            &service_ip
        )),
        "the backup claims the service address"
    );
    for (c, client) in clients.iter_mut().enumerate() {
        client
            .request("GET mine")
            .unwrap_or_else(|e| panic!("connection {c} after the takeover: {e}"));
    }

    // The primary host comes back: a crashed host has none of its old sockets (they are
    // destroyed while it is still cut off, so their resets go nowhere), but its
    // configuration still puts the service address on eth0.
    rig.lab
        .primary
        .exec("ss", &["-K", "-t", "-a", "sport", "=", ":7000"])
        .expect("destroy the crashed host's sockets");
    assert!(has_address(&rig.lab.primary, &service_ip));
    rig.lab
        .lab()
        .reconnect(&rig.lab.primary)
        .expect("reconnect the primary");
    let returning = PrimaryMonitor::new();
    let agent = {
        let (options, monitor) = (primary_options(&rig.lab, 71), returning.clone());
        rig.lab
            .spawn_agent(&rig.lab.primary, move |stop| {
                run_primary_monitored(options, stop, monitor)
            })
            .expect("start the returning primary agent")
    };
    let view = || returning.observer().view();
    assert!(
        wait_until(Duration::from_secs(10), || view().role
            == AgentRole::NonServing),
        "the returning primary does not serve: {:?}",
        view()
    );
    let v = view();
    assert!(
        v.alerts
            .iter()
            .any(|a| a.contains("served by") && a.contains("not serving until `cttmd rejoin`")),
        "the alert says why: {:?}",
        v.alerts
    );
    assert!(
        !has_address(&rig.lab.primary, &service_ip),
        "the service address is gone from the returning primary's eth0"
    );
    assert!(returning.status().is_none(), "it captures nothing");
    let rules = rig
        .lab
        .primary
        .exec("iptables", &["-S"])
        .expect("iptables -S");
    assert!(!rules.contains("NFQUEUE"), "no queue rule: {rules}");

    // The restored connections keep working, and a new connection lands on the backup.
    for (c, client) in clients.iter_mut().enumerate() {
        client
            .request(&format!("ECHO back {c} {}", kv_text(c as u64, 80)))
            .unwrap_or_else(|e| panic!("connection {c} beside the returning primary: {e}"));
    }
    let fresh = new_client_served_by(&rig.lab, &rig.lab.backup, "a new connection");
    let fresh_address = fresh.local().expect("local address");
    let on_primary = service_connections(&rig.lab.primary);
    assert!(
        !lists_client(&on_primary, fresh_address),
        "not by the returning primary: {on_primary}"
    );

    // A rejoin is refused while the backup serves the address.
    returning.observer().request_rejoin();
    assert!(
        wait_until(Duration::from_secs(10), || view()
            .alerts
            .iter()
            .any(|a| a.contains("rejoin refused"))),
        "the rejoin is refused: {:?}",
        view()
    );
    let v = view();
    assert_eq!(v.role, AgentRole::NonServing);
    assert!(
        v.alerts
            .iter()
            .any(|a| a.contains("rejoin refused") && a.contains("served by")),
        "the alert says why: {:?}",
        v.alerts
    );
    assert!(!has_address(&rig.lab.primary, &service_ip));

    fresh.finish().expect("the new connection completes");
    for (c, client) in clients.into_iter().enumerate() {
        client
            .finish()
            .unwrap_or_else(|e| panic!("connection {c} completes: {e}"));
    }
    let backup = rig
        .stop_backup_agent()
        .expect("the backup agent stops")
        .expect("the backup agent ran without error");
    assert_eq!(
        backup.restored.len(),
        CLIENTS,
        "every connection restored: {backup:?}"
    );
    assert!(backup.reset.is_empty(), "none reset: {:?}", backup.reset);

    // The operator retires the backup (agent stopped, address removed there) and asks the
    // primary to rejoin: nobody answers now, so it claims the address and serves again.
    let cidr = format!("{service_ip}/{}", rig.lab.service_prefix_len());
    rig.lab
        .backup
        .exec("ip", &["addr", "del", &cidr, "dev", "eth0"])
        .expect("remove the address from the backup");
    let server = serve_one_kvd_connection(&rig.lab.primary);
    returning.observer().request_rejoin();
    assert!(
        wait_until(Duration::from_secs(10), || view().role
            == AgentRole::Primary
            && has_address(&rig.lab.primary, &service_ip)),
        "the rejoin succeeds once no other host serves the address: {:?}",
        view()
    );
    let back = new_client_served_by(&rig.lab, &rig.lab.primary, "after the rejoin");
    back.finish().expect("the connection completes");
    server.join().expect("kvd thread");

    let exit = agent.stop().expect("the returning agent stops");
    let exit = exit.expect("the returning agent ran without error");
    assert!(
        exit.segments > 0,
        "after the rejoin it tracked the connection"
    );
}

/// Serves one kvd connection on `[::]:7000` in `host` (the crash killed the host's kvd), on
/// a thread; gives up after a while if nobody connects.
fn serve_one_kvd_connection(host: &Netns) -> JoinHandle<()> {
    let address = std::net::SocketAddr::from(([0u16; 8], SERVICE_PORT));
    let listener = host
        .run(move || std::net::TcpListener::bind(address))
        .expect("in the host namespace")
        .expect("listen on the service port");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = cttm_kvd::serve_connection(stream, cttm_kvd::ServerOptions::default());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

#[test]
fn a_partitioned_primary_stops_serving_when_it_finds_the_address_served_elsewhere() {
    if !kernel_tests_enabled(
        "a_partitioned_primary_stops_serving_when_it_finds_the_address_served_elsewhere",
    ) {
        return;
    }
    let lab = FailoverLab::with_replication_network("fdp", ServiceFamily::V4).expect("lab");
    let (mut rig, watchers) = start_observed(lab, CommitMode::Sync, 72, |_, _| {}).expect("agents");
    let service = rig.lab.service();
    let service_ip = service.ip().to_string();
    let view = || watchers.primary.observer().view();

    let mut clients: Vec<KvClient> = (0..2).map(|c| warmed_client(&rig.lab, c)).collect();

    // A partition, not a crash: the primary host is cut off both networks, its agent and
    // its daemon keep running. The backup, hearing nothing and getting no answer to its
    // probes, takes over.
    rig.lab
        .lab()
        .cut(&rig.lab.primary)
        .expect("cut the service port");
    rig.lab
        .lab()
        .cut_attachment(&rig.lab.primary, "eth1")
        .expect("cut the replication port");
    assert!(
        wait_until(Duration::from_secs(20), || has_address(
            &rig.lab.backup,
            &service_ip
        )),
        "the backup takes over"
    );
    for (c, client) in clients.iter_mut().enumerate() {
        client
            .request("PING")
            .unwrap_or_else(|e| panic!("connection {c} after the takeover: {e}"));
    }
    assert_eq!(
        view().role,
        AgentRole::Primary,
        "cut off, the primary cannot know yet"
    );

    // The service network heals (the replication network stays cut: the backup stays
    // silent for the primary). The primary's probes now get the backup's answer.
    let healed = Instant::now();
    rig.lab
        .lab()
        .reconnect(&rig.lab.primary)
        .expect("reconnect the service port");
    let demoted = wait_until(Duration::from_secs(15), || {
        view().role == AgentRole::NonServing
    });
    println!("demoted {:?} after the partition healed", healed.elapsed());
    assert!(demoted, "the primary stops serving: {:?}", view());
    assert!(
        view()
            .alerts
            .iter()
            .any(|a| a.contains("served by") && a.contains("cttmd rejoin")),
        "the alert says why: {:?}",
        view().alerts
    );
    assert!(
        !has_address(&rig.lab.primary, &service_ip),
        "the service address is gone from the primary"
    );
    let rules = rig
        .lab
        .primary
        .exec("iptables", &["-S"])
        .expect("iptables -S");
    assert!(
        !rules.contains("NFQUEUE"),
        "its queue rules are gone: {rules}"
    );

    // The connections the backup continues are undisturbed; new ones go to the backup.
    for (c, client) in clients.iter_mut().enumerate() {
        client
            .request(&format!("ECHO healed {c} {}", kv_text(100 + c as u64, 70)))
            .unwrap_or_else(|e| panic!("connection {c} after the partition healed: {e}"));
    }
    let fresh = new_client_served_by(&rig.lab, &rig.lab.backup, "a new connection");
    fresh.finish().expect("the new connection completes");
    for (c, client) in clients.into_iter().enumerate() {
        client
            .finish()
            .unwrap_or_else(|e| panic!("connection {c} completes: {e}"));
    }

    crash(&mut rig).expect("the demoted primary agent stops without error");
    let backup = finish(rig).expect("the backup agent");
    assert_eq!(
        backup.restored.len(),
        2,
        "both connections restored: {backup:?}"
    );
}
