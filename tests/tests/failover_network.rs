//! Crash failover with the replication link on a network of its own, end to end with the
//! real agents in sync mode (output commit).
//!
//! The lab is [`FailoverLab::with_replication_network`]: the client, the primary and the
//! backup on the service bridge (service address 198.18.0.10), plus a second bridge joining
//! only the primary (`eth1`, 198.19.0.1/24) and the backup (`eth1`, 198.19.0.2/24). The
//! backup agent listens for replication on 198.19.0.2:7700 and the primary connects there.
//!
//! What is checked:
//! - 16 connections with checksummed traffic across the crash: 12 exchange kvd requests
//!   whose every answer is checked against [`cttm_kvd::Session`], 4 download `STREAM`s in a
//!   loop, each byte compared with [`StreamGenerator`] and each `SUM` line checked. Every
//!   connection ends with `COUNT` (no request lost or repeated) and a clean `QUIT`.
//! - The crash cuts the primary off both networks (its service port and its replication
//!   port), then stops its agent and its kvd. Every connection completes, every one is
//!   restored, none reset or diverged.
//! - The replication link really ran on the separate network: `ss` in the backup shows it
//!   established on 198.19.0.2:7700 from 198.19.0.1 (and the primary's side matches), and
//!   AF_PACKET captures on the primary's and the backup's service interfaces (`eth0`) see no
//!   segment to or from the replication port from before the agents start to the end, while
//!   the same capture on the backup's `eth1` sees the replication traffic (the check can
//!   fail) and the `eth0` captures see the service traffic.
//!
//! Every socket has read and write timeouts and every loop a deadline and a count bound.
//! The longest stall a client saw is printed, not asserted (speed is the blackout
//! benchmark's job).

mod failover_agents;

use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource, RingConfig};
use cttm_capture::{CaptureSource, CapturedFrame};
use cttm_core::wire::{ParseError, parse_frame};
use cttm_core::{ServiceEndpoint, ServiceSet};
use cttm_tests::failover_lab::{
    FailoverLab, KvClient, REPLICATION_INTERFACE, SEPARATE_REPLICATION_PRIMARY, SERVICE_PORT,
    ServiceFamily, kv_text, wait_until,
};
use cttm_tests::lab::{Netns, kernel_tests_enabled};
use failover_agents::{crash, finish};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest the test's traffic may run.
const TEST_LIMIT: Duration = Duration::from_secs(90);
/// The longest a capture runs (it is stopped well before).
const CAPTURE_LIMIT: Duration = Duration::from_secs(240);
/// The NFQUEUE queue of this test's primary (other tests use other numbers).
const QUEUE: u16 = 41;

/// Builds the lab with its separate replication network; the agents start with
/// [`failover_agents::start`] (after the captures).
fn replication_network_lab(tag: &str) -> FailoverLab {
    let lab = FailoverLab::with_replication_network(tag, ServiceFamily::V4).expect("lab");
    assert!(lab.has_replication_network());
    assert_eq!(
        lab.replication(),
        "198.19.0.2:7700".parse::<SocketAddr>().expect("address")
    );
    lab
}

/// What one capture saw.
#[derive(Debug, Default)]
struct Seen {
    /// Segments to or from the replication port.
    replication: u64,
    /// Segments to or from the service port.
    service: u64,
    /// The (source, destination) addresses of the replication segments.
    replication_addresses: BTreeSet<(IpAddr, IpAddr)>,
    /// Frames the kernel dropped (the capture missed them).
    dropped: u64,
    /// TCP frames that did not parse (truncated, fragments, malformed): they could hide a
    /// replication segment.
    unparsed: u64,
}

impl Seen {
    /// Counts one captured frame.
    fn count(&mut self, frame: &CapturedFrame<'_>, replication_port: u16, service_port: u16) {
        let segment = match parse_frame(frame.link, frame.data) {
            Ok(segment) => segment,
            // IPv6 packets with extension headers pass the filter (it cannot see behind
            // them); those that are not TCP (multicast listener reports) are not ours.
            Err(ParseError::NotTcp | ParseError::NotIp) => return,
            Err(_) => {
                self.unparsed += 1;
                return;
            }
        };
        let ports = [segment.src.port(), segment.dst.port()];
        if ports.contains(&replication_port) {
            self.replication += 1;
            self.replication_addresses
                .insert((segment.src.ip(), segment.dst.ip()));
        }
        if ports.contains(&service_port) {
            self.service += 1;
        }
    }
}

/// An AF_PACKET capture of one interface of a lab host, on its own thread.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Seen, String>>,
}

impl Capture {
    /// Starts capturing every TCP segment to or from `replication_port` or `service_port`
    /// (any address, IPv4 and IPv6) on `interface` of `host`; returns once the capture is
    /// open, so nothing sent afterwards escapes it.
    fn start(host: &Netns, interface: &str, replication_port: u16, service_port: u16) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened, open_result) = std::sync::mpsc::channel::<Result<(), String>>();
        let interface = interface.to_string();
        let thread = {
            let stop = stop.clone();
            host.spawn(move || -> Result<Seen, String> {
                let any = |ip: IpAddr, port| ServiceEndpoint::new(SocketAddr::new(ip, port));
                let unspecified_v4 = IpAddr::from([0u8; 4]);
                let unspecified_v6 = IpAddr::from([0u16; 8]);
                let services = ServiceSet::new([
                    any(unspecified_v4, replication_port),
                    any(unspecified_v6, replication_port),
                    any(unspecified_v4, service_port),
                    any(unspecified_v6, service_port),
                ]);
                let mut config = AfPacketConfig::new(interface.clone(), services);
                config.ring = RingConfig {
                    block_count: 16,
                    ..RingConfig::default()
                };
                let mut source = match AfPacketSource::open(config) {
                    Ok(source) => {
                        let _ = opened.send(Ok(()));
                        source
                    }
                    Err(e) => {
                        let message = format!("capture on {interface}: {e}");
                        let _ = opened.send(Err(message.clone()));
                        return Err(message);
                    }
                };
                let mut seen = Seen::default();
                let deadline = Instant::now() + CAPTURE_LIMIT;
                loop {
                    // Read once more after the stop flag is seen: the frames sent before it
                    // are counted too.
                    let stopping = stop.load(Ordering::SeqCst) || Instant::now() > deadline;
                    source
                        .read_batch(Duration::from_millis(30), &mut |frame| {
                            seen.count(&frame, replication_port, service_port);
                        })
                        .map_err(|e| format!("capture on {interface}: {e}"))?;
                    if stopping {
                        break;
                    }
                }
                seen.dropped = source.stats().dropped;
                Ok(seen)
            })
            .expect("capture thread")
        };
        match open_result.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the capture did not open: {e}"),
        }
        Capture { stop, thread }
    }

    /// Stops the capture (after a last read) and returns what it saw.
    fn finish(self) -> Seen {
        // The ring hands over a partly filled block after its 10 ms timeout.
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("capture thread")
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The established TCP connections in `host` matching the `ss` filter, as `(local, peer)`.
fn established(host: &Netns, filter: &str) -> Vec<(SocketAddr, SocketAddr)> {
    let out = host
        .exec("ss", &["-tnH", "state", "established", filter])
        .expect("ss in the lab host");
    out.lines()
        .filter_map(|line| {
            // Recv-Q Send-Q Local Peer (no state column with a state filter)
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(2)?.parse().ok()?;
            let peer = fields.get(3)?.parse().ok()?;
            Some((local, peer))
        })
        .collect()
}

/// What one client connection did.
#[derive(Debug)]
struct ClientReport {
    rounds: usize,
    stall: Duration,
}

/// 16 connections (12 request/response, 4 `STREAM` downloads) across the crash, with the
/// replication link on its own network; see the module documentation.
#[test]
fn replication_on_a_separate_network() {
    if !kernel_tests_enabled("replication_on_a_separate_network") {
        return;
    }
    const CONNECTIONS: usize = 16;
    /// Every fourth connection downloads streams; the others exchange requests.
    const STREAM_EVERY: usize = 4;
    const STREAM_LEN: u64 = 1_500_000;
    /// Rounds each connection runs before the crash may come (a stream round is one
    /// download).
    const ROUNDS_BEFORE: usize = 30;
    const STREAM_ROUNDS_BEFORE: usize = 1;
    /// Rounds each connection runs after it saw the crash.
    const ROUNDS_AFTER: usize = 30;
    const STREAM_ROUNDS_AFTER: usize = 2;
    const MAX_ROUNDS: usize = 20_000;

    let lab = replication_network_lab("fnet");
    let replication_port = lab.replication().port();
    // The captures open before the agents start: the whole replication link is seen.
    let captures = [
        (
            "primary eth0",
            Capture::start(&lab.primary, "eth0", replication_port, SERVICE_PORT),
        ),
        (
            "backup eth0",
            Capture::start(&lab.backup, "eth0", replication_port, SERVICE_PORT),
        ),
        (
            "backup eth1",
            Capture::start(
                &lab.backup,
                REPLICATION_INTERFACE,
                replication_port,
                SERVICE_PORT,
            ),
        ),
    ];
    let mut rig =
        failover_agents::start(lab, QUEUE).expect("both agents running, replication link up");

    // The link runs between the replication addresses, on both ends.
    let replication = rig.lab.replication();
    let primary_replication_ip: IpAddr = SEPARATE_REPLICATION_PRIMARY.parse().expect("address");
    let backup_side = established(&rig.lab.backup, &format!("( sport = :{replication_port} )"));
    assert!(
        !backup_side.is_empty()
            && backup_side
                .iter()
                .all(|(local, peer)| *local == replication && peer.ip() == primary_replication_ip),
        "the backup's replication link is not {replication} <- {primary_replication_ip}: {backup_side:?}"
    );
    let primary_side = established(
        &rig.lab.primary,
        &format!("( dport = :{replication_port} )"),
    );
    assert!(
        !primary_side.is_empty()
            && primary_side
                .iter()
                .all(|(local, peer)| local.ip() == primary_replication_ip && *peer == replication),
        "the primary's replication link is not {primary_replication_ip} -> {replication}: {primary_side:?}"
    );

    let service = rig.lab.service();
    let crashed = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CONNECTIONS).map(|_| AtomicUsize::new(0)).collect());
    // Stream bytes received, per connection.
    let streamed: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CONNECTIONS).map(|_| AtomicUsize::new(0)).collect());
    let deadline = Instant::now() + TEST_LIMIT;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (crashed, rounds, streamed) = (crashed.clone(), rounds.clone(), streamed.clone());
            rig.lab
                .client
                .spawn(move || -> Result<ClientReport, String> {
                    let mut client = KvClient::connect(service, Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))?;
                    let streaming = c % STREAM_EVERY == 0;
                    let after = if streaming {
                        STREAM_ROUNDS_AFTER
                    } else {
                        ROUNDS_AFTER
                    };
                    let mut rounds_after_crash = 0usize;
                    let mut round = 0usize;
                    while round < MAX_ROUNDS && rounds_after_crash < after {
                        if Instant::now() > deadline {
                            return Err(format!(
                                "connection {c}: out of time after {round} rounds"
                            ));
                        }
                        let seen_crash = crashed.load(Ordering::SeqCst);
                        let result = if streaming {
                            client
                                .request(&format!("SET round {round}"))
                                .and_then(|()| {
                                    client.stream(
                                        STREAM_LEN,
                                        (c * MAX_ROUNDS + round) as u64,
                                        &streamed[c],
                                    )
                                })
                                .and_then(|()| client.request("GET round"))
                        } else {
                            let line =
                                kv_text((c * MAX_ROUNDS + round) as u64, 40 + (round * 7) % 300);
                            client
                                .request(&format!("ECHO {c} {round} {line}"))
                                .and_then(|()| client.request(&format!("INCR total {round}")))
                                .and_then(|()| {
                                    if round.is_multiple_of(10) {
                                        client
                                            .request(&format!("SET k{} {c}-{round}", round % 3))?;
                                        client.request(&format!("GET k{}", (round + 1) % 3))
                                    } else {
                                        Ok(())
                                    }
                                })
                        };
                        result.map_err(|e| format!("connection {c}, round {round}: {e}"))?;
                        round += 1;
                        rounds[c].store(round, Ordering::SeqCst);
                        if seen_crash {
                            rounds_after_crash += 1;
                        }
                        if !streaming {
                            std::thread::sleep(Duration::from_millis(3));
                        }
                    }
                    let stall = client
                        .finish()
                        .map_err(|e| format!("connection {c}, closing: {e}"))?;
                    Ok(ClientReport {
                        rounds: round,
                        stall,
                    })
                })
                .expect("client thread")
        })
        .collect();

    // The crash comes once every connection is well under way and every download is in the
    // middle of a stream (between a tenth and nine tenths of it: the downloads never pause,
    // so this moment comes).
    let mid_stream = |bytes: usize| {
        let into = bytes as u64 % STREAM_LEN;
        bytes as u64 >= STREAM_LEN && (STREAM_LEN / 10..=STREAM_LEN * 9 / 10).contains(&into)
    };
    let under_way = wait_until(TEST_LIMIT, || {
        rounds.iter().enumerate().all(|(c, r)| {
            if c % STREAM_EVERY == 0 {
                r.load(Ordering::SeqCst) >= STREAM_ROUNDS_BEFORE
                    && mid_stream(streamed[c].load(Ordering::SeqCst))
            } else {
                r.load(Ordering::SeqCst) >= ROUNDS_BEFORE
            }
        })
    });
    let streamed_at_crash: Vec<usize> = streamed.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    let crashed_at = if under_way {
        Some(crash(&mut rig).expect("crash the primary"))
    } else {
        None
    };
    crashed.store(true, Ordering::SeqCst);
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let resumed = crashed_at.map(|at| at.elapsed());
    let exit = finish(rig).expect("the backup agent");
    let seen: Vec<(&str, Seen)> = captures
        .into_iter()
        .map(|(name, capture)| (name, capture.finish()))
        .collect();

    let stall = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.stall)
        .max()
        .unwrap_or_default();
    println!(
        "replication_on_a_separate_network: longest stall {:.0} ms; {} of {CONNECTIONS} connections completed ({} rounds, {} stream bytes, {} at the crash), all done {:.1} s after the crash; restored {}, reset {:?}, diverged {:?}; captured {}",
        stall.as_secs_f64() * 1e3,
        results.iter().filter(|r| r.is_ok()).count(),
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.rounds)
            .sum::<usize>(),
        streamed
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .sum::<usize>(),
        streamed_at_crash.iter().sum::<usize>(),
        resumed.unwrap_or_default().as_secs_f64(),
        exit.restored.len(),
        exit.reset,
        exit.diverged,
        seen.iter()
            .map(|(name, s)| format!(
                "{name}: {} replication / {} service segments, {} dropped",
                s.replication, s.service, s.dropped
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );

    assert!(
        under_way,
        "the connections did not get under way: {rounds:?}"
    );
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "connections failed: {failed:?}; {exit:?}"
    );
    assert!(exit.takeover.is_some(), "the backup took over: {exit:?}");
    assert_eq!(exit.restored.len(), CONNECTIONS, "{exit:?}");
    assert!(
        exit.reset.is_empty() && exit.diverged.is_empty(),
        "{exit:?}"
    );

    // The replication traffic used the replication network, and only it.
    for (name, s) in &seen {
        assert_eq!(
            s.dropped, 0,
            "{name}: the capture missed frames, so it cannot vouch for what crossed: {s:?}"
        );
        assert_eq!(
            s.unparsed, 0,
            "{name}: frames the capture could not read, so it cannot vouch for them: {s:?}"
        );
    }
    let [(_, primary_eth0), (_, backup_eth0), (_, backup_eth1)] = &seen[..] else {
        unreachable!("three captures");
    };
    assert_eq!(
        primary_eth0.replication, 0,
        "replication segments left the primary on the service network: {primary_eth0:?}"
    );
    assert_eq!(
        backup_eth0.replication, 0,
        "replication segments crossed the backup's service interface: {backup_eth0:?}"
    );
    assert!(
        backup_eth1.replication > 0,
        "the capture on the replication network saw no replication segment: {backup_eth1:?}"
    );
    let link = BTreeSet::from([
        (primary_replication_ip, replication.ip()),
        (replication.ip(), primary_replication_ip),
    ]);
    assert!(
        backup_eth1.replication_addresses.is_subset(&link),
        "replication segments between other addresses: {:?}",
        backup_eth1.replication_addresses
    );
    assert_eq!(
        backup_eth1.service, 0,
        "service segments on the replication network: {backup_eth1:?}"
    );
    // The service-side captures work: they saw the service traffic (the primary's before
    // the crash, the backup's after the takeover).
    assert!(primary_eth0.service > 0, "{primary_eth0:?}");
    assert!(backup_eth0.service > 0, "{backup_eth0:?}");
}
