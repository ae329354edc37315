//! Throughput of `TCP_REPAIR` dump and restore, in connections per second, for 1, 100 and
//! 10 000 connections, against a baseline measured in the same run: creating and connecting
//! the same number of plain sockets (connect + accept over loopback).
//!
//! Needs root (it runs in a private network namespace of its own and uses TCP_REPAIR); without
//! it, it says so and exits. Run: `cargo bench -p cttm-restore --bench restore`.
//!
//! Each connection has a few bytes queued in both directions, so dump and restore move queue
//! contents too. Connections are handled in batches of at most 4 000 (each costs a descriptor
//! on both ends; the process may have 20 000).

use cttm_restore::RestoreOptions;
use cttm_restore::repair::{FrozenConnection, monotonic_now, restore_connection};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const BATCH: usize = 4_000;
const QUEUED: usize = 100;

#[derive(Default)]
struct Timing {
    connect: Duration,
    dump: Duration,
    restore: Duration,
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("restore bench: skipped, needs root (network namespace, TCP_REPAIR)");
        return;
    }
    // A private network namespace: nothing here touches the host's addresses or routes.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        println!("restore bench: skipped, cannot create a network namespace: {e}");
        return;
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !matches!(up, Ok(s) if s.success()) {
        println!("restore bench: skipped, cannot bring loopback up");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    println!(
        "restore bench: connections per second (higher is better), loopback, {QUEUED} B queued each way"
    );
    for total in [1usize, 100, 10_000] {
        let mut timing = Timing::default();
        let mut done = 0;
        while done < total {
            let n = BATCH.min(total - done);
            run_batch(&listener, addr, n, &mut timing);
            done += n;
        }
        let rate = |d: Duration| total as f64 / d.as_secs_f64().max(1e-9);
        let baseline = rate(timing.connect);
        let dump = rate(timing.dump);
        let restore = rate(timing.restore);
        let both = rate(timing.dump + timing.restore);
        println!(
            "  n={total:>6}: connect+accept {baseline:>10.0}/s | dump {dump:>10.0}/s ({:.2}x) | restore {restore:>10.0}/s ({:.2}x) | dump+restore {both:>10.0}/s ({:.2}x)",
            dump / baseline,
            restore / baseline,
            both / baseline
        );
    }
}

fn run_batch(listener: &TcpListener, addr: std::net::SocketAddr, n: usize, timing: &mut Timing) {
    // Baseline: create and connect n plain sockets.
    let start = Instant::now();
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        pairs.push((client, server));
    }
    timing.connect += start.elapsed();
    let payload = [0x5au8; QUEUED];
    for (client, server) in pairs.iter_mut() {
        client.write_all(&payload).expect("client write");
        server.write_all(&payload).expect("server write");
    }
    // Let the bytes arrive, so they sit in receive queues.
    std::thread::sleep(Duration::from_millis(50));
    let (clients, servers): (Vec<TcpStream>, Vec<TcpStream>) = pairs.into_iter().unzip();

    // Dump: freeze, dump, close silently.
    let start = Instant::now();
    let mut snapshots = Vec::with_capacity(n);
    for server in servers {
        let frozen = FrozenConnection::freeze(server).expect("freeze");
        snapshots.push(frozen.dump().expect("dump"));
        frozen.close().expect("close");
    }
    timing.dump += start.elapsed();

    // Restore.
    let options = RestoreOptions::at(monotonic_now());
    let start = Instant::now();
    let restored: Vec<TcpStream> = snapshots
        .iter()
        .map(|s| {
            restore_connection(s, &options)
                .expect("restore")
                .into_stream()
        })
        .collect();
    timing.restore += start.elapsed();

    // Check one connection end to end: the queued bytes arrive, and it still carries data.
    let mut first_server = restored.into_iter().next().expect("one");
    let mut first_client = clients.into_iter().next().expect("one");
    let mut buf = [0u8; QUEUED];
    first_server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    first_client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    first_server
        .read_exact(&mut buf)
        .expect("restored receive queue");
    assert_eq!(buf, payload);
    first_client.read_exact(&mut buf).expect("client receive");
    first_server.write_all(b"x").expect("write after restore");
    let mut one = [0u8; 1];
    first_client
        .read_exact(&mut one)
        .expect("client reads after restore");
}
