//! The cost of output commit: the latency a client sees on one kvd request/response
//! connection, without agents, with the agents in async mode and in sync mode, against the
//! replication round trip itself, all in the same run in [`FailoverLab`]s (client, primary,
//! backup namespaces on one bridge; kvd on both servers).
//!
//! Issue 5 says of sync mode: "Held segments are released in order and in batches; the
//! hold adds about one replication round trip, no more." This measures it:
//!
//! - baseline: plain kvd over the bridge, no agent running;
//! - async: primary + backup agents, async mode (AF_PACKET capture, no hold);
//! - sync: primary + backup agents, sync mode (NFQUEUE, every answer held until the backup
//!   acknowledged what it carries and acknowledges);
//! - repl rtt: a plain TCP ping-pong (64 bytes each way, `TCP_NODELAY`) between the primary
//!   and the backup namespaces over the same bridge: the network part of one replication
//!   round trip;
//! - repl ack: the replication itself: a `PrimaryService` in the primary namespace and a
//!   `BackupService` in the backup namespace (Noise over TCP, the same bridge), one 64-byte
//!   `ClientData` event submitted, then waited for until the backup acknowledged it.
//!
//! Each mode gets a fresh lab; each kvd mode makes [`WARMUP`] unmeasured then [`ROUNDS`]
//! measured round trips on one connection (alternately `SET k<i> v` and `GET k<i>`, every
//! answer checked by [`KvClient`]'s oracle), timed from the client. Printed: p50/p99 per
//! mode, the ratio to baseline, and sync's added latency (p50 sync − p50 baseline) over the
//! replication round trip p50.
//!
//! Needs root (namespaces, NFQUEUE, AF_PACKET); without it, it says so and exits 0.
//! `cargo bench -p cttmd --bench hold`.

/// The agents in the lab, shared with the failover tests of `cttm-tests` (which cannot be a
/// library of cttmd's: cttmd depends on `cttm-tests`).
#[path = "../../../tests/tests/failover_agents/mod.rs"]
#[allow(dead_code)]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, KvClient, REPLICATION_KEY, ServiceFamily};
use cttmd::options::CommitMode;
use cttmd::primary::PrimaryExit;
use failover_agents::Rig;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Measured round trips per mode.
const ROUNDS: usize = 2000;
/// Unmeasured round trips first (caches, ARP, the agents' first connection state).
const WARMUP: usize = 100;
/// Every mode's round trips must be done within this.
const MODE_LIMIT: Duration = Duration::from_secs(120);
/// Socket read/write timeouts of the ping-pong.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The ping-pong's port on the backup (not the service port, not the replication port).
const PING_PORT: u16 = 7801;
/// The ping-pong's message size.
const PING_SIZE: usize = 64;

/// The sorted round-trip times of one mode.
struct Samples(Vec<Duration>);

impl Samples {
    fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples(v)
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `WARMUP + ROUNDS` kvd round trips on one connection from the client host; the last
/// `ROUNDS` timed.
fn kv_round_trips(lab: &FailoverLab) -> Result<Samples, String> {
    let service = lab.service();
    let times = lab
        .client
        .run(move || -> Result<Vec<Duration>, String> {
            let mut client = KvClient::connect(service, IO_TIMEOUT)
                .map_err(|e| format!("connecting to {service}: {e}"))?;
            let deadline = Instant::now() + MODE_LIMIT;
            let mut times = Vec::with_capacity(ROUNDS);
            for i in 0..WARMUP + ROUNDS {
                if Instant::now() >= deadline {
                    return Err(format!("only {i} round trips within {MODE_LIMIT:?}"));
                }
                let request = if i % 2 == 0 {
                    format!("SET k{} v{i}", i / 2)
                } else {
                    format!("GET k{}", i / 2)
                };
                let started = Instant::now();
                client.request(&request)?;
                if i >= WARMUP {
                    times.push(started.elapsed());
                }
            }
            client.finish()?;
            Ok(times)
        })
        .map_err(|e| e.to_string())??;
    Ok(Samples::new(times))
}

/// A TCP ping-pong from the primary to the backup over the lab's bridge: `WARMUP + ROUNDS`
/// exchanges of `PING_SIZE` bytes each way, the last `ROUNDS` timed.
fn replication_round_trips(lab: &FailoverLab) -> Result<Samples, String> {
    let backup_address = SocketAddr::from(([198, 18, 0, 3], PING_PORT));
    let listener = lab
        .backup
        .run(move || TcpListener::bind(backup_address))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("binding {backup_address} on the backup: {e}"))?;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        // The listener was made inside the backup namespace; the accepted socket stays there.
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("echo listener: {e}"))?;
        let deadline = Instant::now() + IO_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("echo accept: {e}")),
            }
        };
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("echo socket: {e}"))?;
        let mut buffer = [0u8; PING_SIZE];
        for _ in 0..WARMUP + ROUNDS {
            (&stream)
                .read_exact(&mut buffer)
                .and_then(|()| (&stream).write_all(&buffer))
                .map_err(|e| format!("echo: {e}"))?;
        }
        Ok(())
    });
    let times = lab
        .primary
        .run(move || -> Result<Vec<Duration>, String> {
            let stream = TcpStream::connect_timeout(&backup_address, IO_TIMEOUT)
                .map_err(|e| format!("connecting to {backup_address}: {e}"))?;
            stream
                .set_read_timeout(Some(IO_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
                .and_then(|()| stream.set_nodelay(true))
                .map_err(|e| format!("ping socket: {e}"))?;
            let deadline = Instant::now() + MODE_LIMIT;
            let message = [0x5au8; PING_SIZE];
            let mut answer = [0u8; PING_SIZE];
            let mut times = Vec::with_capacity(ROUNDS);
            for i in 0..WARMUP + ROUNDS {
                if Instant::now() >= deadline {
                    return Err(format!("only {i} ping-pongs within {MODE_LIMIT:?}"));
                }
                let started = Instant::now();
                (&stream)
                    .write_all(&message)
                    .and_then(|()| (&stream).read_exact(&mut answer))
                    .map_err(|e| format!("ping {i}: {e}"))?;
                if answer != message {
                    return Err(format!("ping {i}: the echo differs"));
                }
                if i >= WARMUP {
                    times.push(started.elapsed());
                }
            }
            Ok(times)
        })
        .map_err(|e| e.to_string())?;
    let echoed = echo
        .join()
        .map_err(|_| "the echo thread panicked".to_string())?;
    let times = times?;
    echoed?;
    Ok(Samples::new(times))
}

/// The replication round trip itself: the agents' replication services (Noise, TCP) from
/// the primary to the backup over the lab's bridge, one 64-byte `ClientData` event at a
/// time, from its submission until the primary learns the backup applied it
/// (`PrimaryService::wait_acked`): `WARMUP + ROUNDS` events, the last `ROUNDS` timed.
fn replication_ack_round_trips(lab: &FailoverLab) -> Result<Samples, String> {
    use cttm_core::event::{ConnectionEvent, EventKind, Handshake};
    use cttm_core::message::MessageV1;
    use cttm_core::{ConnectionId, ReplicaConfig, ReplicationMessage, ServiceEndpoint, ServiceSet};
    use cttm_replicate::transport::tcp::{TcpBackupTransport, TcpConfig, TcpPrimaryTransport};
    use cttm_replicate::{
        BackupConfig, BackupService, PreSharedKey, PrimaryConfig, PrimaryService, ReplicaStore,
        Security, Submitted,
    };
    use std::sync::Arc;

    let listen = SocketAddr::from(([198, 18, 0, 3], PING_PORT + 1));
    let service = lab.service();
    let tcp = TcpConfig::new(
        Security::Noise(PreSharedKey::new(REPLICATION_KEY)),
        ServiceSet::new([ServiceEndpoint::new(service)]),
    );
    let backup_tcp = tcp.clone();
    // The backup's threads are spawned inside its namespace, so they stay there.
    let backup = lab
        .backup
        .run(move || {
            let transport = TcpBackupTransport::bind(backup_tcp, listen)
                .map_err(|e| format!("binding {listen}: {e}"))?;
            let store = ReplicaStore::new(ReplicaConfig::default());
            Ok::<_, String>(BackupService::start(
                BackupConfig::default(),
                store,
                1,
                Arc::new(transport),
            ))
        })
        .map_err(|e| e.to_string())??;
    let id = ConnectionId {
        client: SocketAddr::from(([198, 18, 0, 1], 40_000)),
        server: service,
    };
    let event = move |kind| {
        ReplicationMessage::V1(MessageV1::Event(ConnectionEvent {
            id,
            at: cttm_core::Instant::ZERO,
            kind,
        }))
    };
    let times = lab
        .primary
        .run(move || -> Result<Vec<Duration>, String> {
            let primary = PrimaryService::start(
                PrimaryConfig::default(),
                2,
                Arc::new(TcpPrimaryTransport::new(tcp, listen)),
            );
            let handshake = Handshake {
                client_isn: cttm_core::seq::SeqNumber(1),
                server_isn: cttm_core::seq::SeqNumber(2),
                client_mss: Some(1460),
                server_mss: Some(1460),
                client_window_scale: Some(7),
                server_window_scale: Some(7),
                sack_permitted: true,
                timestamps: false,
                client_syn_tsval: None,
                server_syn_tsval: None,
                client_syn_window: 64_240,
                server_syn_window: 65_160,
                mid_stream: false,
            };
            primary
                .submit(event(EventKind::Opened(handshake)))
                .map_err(|e| format!("submitting the handshake: {e:?}"))?;
            if !primary.wait_synchronised(IO_TIMEOUT) {
                return Err("the replication link did not come up".into());
            }
            let deadline = Instant::now() + MODE_LIMIT;
            let mut times = Vec::with_capacity(ROUNDS);
            for i in 0..WARMUP + ROUNDS {
                if Instant::now() >= deadline {
                    return Err(format!("only {i} replication acks within {MODE_LIMIT:?}"));
                }
                let started = Instant::now();
                let message = event(EventKind::ClientData {
                    offset: (i * PING_SIZE) as u64,
                    bytes: vec![0x5a; PING_SIZE],
                });
                let seq = match primary.submit(message) {
                    Ok(Submitted::Queued(seq)) => seq,
                    other => return Err(format!("event {i} not queued: {other:?}")),
                };
                if !primary.wait_acked(seq, IO_TIMEOUT) {
                    return Err(format!("event {i} not acknowledged within {IO_TIMEOUT:?}"));
                }
                if i >= WARMUP {
                    times.push(started.elapsed());
                }
            }
            Ok(times)
        })
        .map_err(|e| e.to_string())?;
    drop(backup);
    Ok(Samples::new(times?))
}

/// Both agents in async mode, the replication link up, with the sync tests' settings.
fn start_async(lab: FailoverLab) -> Result<Rig, String> {
    failover_agents::start_in_mode(lab, CommitMode::Async, 0).map_err(|e| e.to_string())
}

/// The agents' round trips, then both agents stopped (the primary by the lab's crash, the
/// only way the rig stops it); returns what the primary agent counted.
fn agents_round_trips(mut rig: Rig) -> Result<Measured, String> {
    let measured = kv_round_trips(&rig.lab);
    // The same ping-pong as the baseline's, with the agents running (idle: the kvd
    // connection is closed) on the same hosts.
    let replication = replication_round_trips(&rig.lab);
    let acks = replication_ack_round_trips(&rig.lab);
    // Let the backup acknowledge the tail before the crash (not measured).
    std::thread::sleep(Duration::from_millis(200));
    let (_, exit) = rig.crash().map_err(|e| e.to_string())?;
    let exit = exit.map_err(|e| format!("the primary agent failed: {e:?}"))?;
    failover_agents::finish(rig)?;
    Ok((measured?, replication?, acks?, exit))
}

/// A mode's kvd round trips, its replication ping-pong, its replication acks, what the primary agent counted.
type Measured = (Samples, Samples, Samples, PrimaryExit);

fn baseline() -> Result<(Samples, Samples, Samples), String> {
    let lab = FailoverLab::new("hb", ServiceFamily::V4).map_err(|e| e.to_string())?;
    let kv = kv_round_trips(&lab)?;
    let replication = replication_round_trips(&lab)?;
    let acks = replication_ack_round_trips(&lab)?;
    Ok((kv, replication, acks))
}

fn async_mode() -> Result<Measured, String> {
    let lab = FailoverLab::new("ha", ServiceFamily::V4).map_err(|e| e.to_string())?;
    agents_round_trips(start_async(lab)?)
}

fn sync_mode() -> Result<Measured, String> {
    let lab = FailoverLab::new("hs", ServiceFamily::V4).map_err(|e| e.to_string())?;
    let rig = failover_agents::start(lab, 51).map_err(|e| e.to_string())?;
    agents_round_trips(rig)
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "hold: skipped, needs root (network namespaces, NFQUEUE, AF_PACKET); run `sudo -E cargo bench -p cttmd --bench hold`"
        );
        return;
    }
    println!(
        "hold: one kvd connection, {ROUNDS} round trips per mode (after {WARMUP} unmeasured), SET/GET alternately, timed from the client"
    );
    let (base, replication, acks) = match baseline() {
        Ok(b) => b,
        Err(e) => {
            println!("hold: baseline failed: {e}");
            return;
        }
    };
    let asynchronous = async_mode();
    let synchronous = sync_mode();
    let base_p50 = base.percentile(0.5);
    let base_p99 = base.percentile(0.99);
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "mode", "p50 us", "p99 us", "p50/base", "p99/base", "held", "released"
    );
    let row = |name: &str, s: &Samples, counts: Option<&PrimaryExit>| {
        let (held, released) = counts.map_or(("-".to_string(), "-".to_string()), |e| {
            (e.held.to_string(), e.released.to_string())
        });
        println!(
            "{:<10} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9} {:>9}",
            name,
            micros(s.percentile(0.5)),
            micros(s.percentile(0.99)),
            s.percentile(0.5).as_secs_f64() / base_p50.as_secs_f64(),
            s.percentile(0.99).as_secs_f64() / base_p99.as_secs_f64(),
            held,
            released
        );
    };
    row("baseline", &base, None);
    match &asynchronous {
        Ok((s, _, _, e)) => row("async", s, Some(e)),
        Err(e) => println!("async: failed: {e}"),
    }
    match &synchronous {
        Ok((s, _, _, e)) => row("sync", s, Some(e)),
        Err(e) => println!("sync: failed: {e}"),
    }
    row("rtt base", &replication, None);
    if let Ok((_, r, _, _)) = &asynchronous {
        row("rtt async", r, None);
    }
    if let Ok((_, r, _, _)) = &synchronous {
        row("rtt sync", r, None);
    }
    row("ack base", &acks, None);
    if let Ok((_, _, a, _)) = &asynchronous {
        row("ack async", a, None);
    }
    if let Ok((_, _, a, _)) = &synchronous {
        row("ack sync", a, None);
    }
    if let Ok((_, _, sync_acks, exit)) = &synchronous {
        let hold = exit.hold_time;
        let ack_p50 = micros(sync_acks.percentile(0.5));
        println!(
            "hold itself (a packet's time in the output-commit gate, {} packets): p50 {} us, p99 {} us, max {} us; p50 = {:.2} x the replication ack round trip p50 ({:.1} us, sync lab)",
            hold.samples,
            hold.p50_us,
            hold.p99_us,
            hold.max_us,
            hold.p50_us as f64 / ack_p50,
            ack_p50
        );
    }
    if let Ok((sync, sync_rtt, sync_acks, _)) = &synchronous {
        let added = sync.percentile(0.5).saturating_sub(base_p50);
        for (name, rtt) in [
            ("TCP ping-pong, baseline lab", &replication),
            ("TCP ping-pong, sync lab", sync_rtt),
            ("replication ack, baseline lab", &acks),
            ("replication ack, sync lab", sync_acks),
        ] {
            let rtt = rtt.percentile(0.5);
            println!(
                "sync added latency (p50 sync - p50 baseline): {:.1} us = {:.2} x the replication round trip p50 ({:.1} us, {name})",
                micros(added),
                added.as_secs_f64() / rtt.as_secs_f64(),
                micros(rtt)
            );
        }
    }
    println!(
        "(microseconds; rtt base/async/sync: TCP ping-pong of {PING_SIZE} bytes primary -> backup over the same bridge, the network part of a replication round trip, in that mode's lab (agents running, idle, in async/sync); ratios to the kvd baseline; ack base/async/sync: the replication services (Noise over TCP, primary -> backup, same bridge), one 64-byte ClientData event submitted until acknowledged; held/released: the primary agent's segment counts)"
    );
}
