//! Crash failover in the cases that matter, end to end with the real agents in sync mode
//! (output commit) in a [`FailoverLab`]: a client, a primary running kvd and
//! `cttmd::primary::run_primary_monitored`, a backup running kvd (the standby) and
//! `cttmd::backup::run_backup`. The crash: the primary's switch port goes down (no FIN, no
//! RST escapes), then its agent stops and its daemon's sockets close into the void.
//!
//! Every answer the client gets is checked against [`cttm_kvd::Session`] (and `STREAM`
//! bytes against [`StreamGenerator`]), so a lost, duplicated or changed byte in either
//! direction fails the test. Every socket has read and write timeouts and every loop a
//! deadline and a count bound: a hang is a failure, not a stuck run. Each test prints the
//! longest stall a client saw (no assertion on it: speed is the blackout benchmark's job).
//!
//! | test | the crash comes |
//! |---|---|
//! | `handshakes_in_flight` | while clients open connections in a loop |
//! | `third_ack_lost_before_the_crash` | after a SYN-ACK left, before the primary saw the third ACK |
//! | `upload_in_progress` | during a 6 MB client → server transfer (a quarter acknowledged) |
//! | `download_in_progress` | during an 8 MB `STREAM` server → client (2 MB received) |
//! | `idle_connections` | while every connection is idle |
//! | `unmodified_socat_client` | while `socat` (Debian's, unmodified) receives a 3 MB `STREAM` |
//! | `ipv6_service_address` | mid-traffic, service address 2001:db8::10 |
//!
//! The tests take turns (one lab at a time): several labs with agents on two cores would
//! make heartbeats late enough to look like crashes.

mod failover_agents;

use cttm_kvd::{Reply, Session, StreamGenerator};
use cttm_restore::repair::socket_tcp_info;
use cttm_tests::failover_lab::{
    FailoverLab, KV_CLIENT_TIMEOUT, KvClient, ServiceFamily, kv_text, wait_until,
};
use cttm_tests::lab::kernel_tests_enabled;
use cttmd::backup::BackupExit;
use failover_agents::{Rig, crash, finish};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any one test's traffic may run.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// One lab at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

/// Builds a lab (`tag` in its namespace names) and starts both agents in it (`queue`: the
/// primary's NFQUEUE number).
fn start_rig(tag: &str, family: ServiceFamily, queue: u16) -> Rig {
    let lab = FailoverLab::new(tag, family).expect("lab");
    failover_agents::start(lab, queue).expect("both agents running, replication link up")
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The crash while `client` runs; then what it returned and what the backup did.
fn crash_and_join<T>(mut rig: Rig, client: JoinHandle<T>) -> (T, BackupExit) {
    crash(&mut rig).expect("crash the primary");
    let result = client.join().expect("client thread");
    (result, finish(rig).expect("the backup agent"))
}

/// The backup restored `count` connections and none was reset or diverged.
fn assert_restored_cleanly(exit: &BackupExit, count: usize) {
    assert_eq!(exit.restored.len(), count, "{exit:?}");
    assert!(
        exit.reset.is_empty() && exit.diverged.is_empty(),
        "{exit:?}"
    );
}

fn print_stall(test: &str, stall: Duration, extra: &str) {
    println!(
        "{test}: longest stall {:.0} ms; {extra}",
        stall.as_secs_f64() * 1e3
    );
}

/// (a) Clients open connections in a loop while the primary dies. Every connection the
/// client saw established completes its exchanges and its clean close; one whose handshake
/// had not completed may fail to connect (bounded retries), never hang.
#[test]
fn handshakes_in_flight() {
    if !kernel_tests_enabled("handshakes_in_flight") {
        return;
    }
    let _serial = serial();
    const CLIENTS: usize = 8;
    const MAX_CONNECTIONS_PER_CLIENT: usize = 2000;
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
    /// A handshake this slow lost a segment to the crash (the SYN is retransmitted after
    /// 1 s): it was in flight when the primary died.
    const SLOW_CONNECT: Duration = Duration::from_millis(300);
    let mut rig = start_rig("fch", ServiceFamily::V4, 31);
    let service = rig.lab.service();
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + TEST_LIMIT;
    // Each client: (completed, connect failures, longest stall, failures after established,
    // slow handshakes)
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, completed) = (stop.clone(), completed.clone());
            rig.lab
                .client
                .spawn(move || {
                    let mut done = 0usize;
                    let mut connect_failures = Vec::new();
                    let mut broken = Vec::new();
                    let mut stall = Duration::ZERO;
                    let mut slow_connects = 0usize;
                    for n in 0..MAX_CONNECTIONS_PER_CLIENT {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let started = Instant::now();
                        let mut client = match KvClient::connect(service, CONNECT_TIMEOUT) {
                            Ok(client) => client,
                            Err(e) => {
                                connect_failures.push(format!("{e} after {:?}", started.elapsed()));
                                continue;
                            }
                        };
                        let connect_time = started.elapsed();
                        stall = stall.max(connect_time);
                        if connect_time > SLOW_CONNECT {
                            slow_connects += 1;
                        }
                        let local = client.local().expect("local address");
                        let result = (|| {
                            client.request(&format!("SET k {c}-{n}"))?;
                            client.request("INCR i 7")?;
                            client.request("GET k")?;
                            client.request("COUNT")?;
                            client.quit()
                        })();
                        match result {
                            Ok(s) => {
                                stall = stall.max(s);
                                done += 1;
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => broken.push(format!("{local}: {e}")),
                        }
                    }
                    (done, connect_failures, stall, broken, slow_connects)
                })
                .expect("client thread")
        })
        .collect();

    assert!(
        wait_until(Duration::from_secs(30), || completed.load(Ordering::SeqCst)
            >= 40),
        "connections complete before the crash"
    );
    let before = completed.load(Ordering::SeqCst);
    let crashed_at = crash(&mut rig).expect("crash the primary");
    // New connections go on until enough completed after the takeover.
    let after_takeover = wait_until(Duration::from_secs(40), || {
        completed.load(Ordering::SeqCst) >= before + 40
    });
    stop.store(true, Ordering::SeqCst);
    let reports: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let exit = finish(rig).expect("the backup agent");
    let stall = reports.iter().map(|r| r.2).max().unwrap_or_default();
    let failures: Vec<&String> = reports.iter().flat_map(|r| r.1.iter()).collect();
    let broken: Vec<&String> = reports.iter().flat_map(|r| r.3.iter()).collect();
    print_stall(
        "handshakes_in_flight",
        stall,
        &format!(
            "{} connections completed ({before} before the crash), {} handshakes caught by the crash, {} connect attempts failed, restored {}, reset {:?}; {:.1} s of traffic after the crash",
            reports.iter().map(|r| r.0).sum::<usize>(),
            reports.iter().map(|r| r.4).sum::<usize>(),
            failures.len(),
            exit.restored.len(),
            exit.reset,
            crashed_at.elapsed().as_secs_f64()
        ),
    );
    assert!(
        broken.is_empty(),
        "established connections failed: {broken:?}"
    );
    assert!(
        after_takeover,
        "new connections complete after the takeover"
    );
    assert!(exit.takeover.is_some(), "the backup took over");
    assert!(exit.diverged.is_empty(), "{exit:?}");
    // Failed connects are bounded: each took at most CONNECT_TIMEOUT, a few per client.
    assert!(
        failures.len() <= CLIENTS * 10,
        "too many failed connects: {failures:?}"
    );
}

/// Pipelined `SET u<i> <60 kB>` requests, 6 MB in all (paced over about 1.5 s), the crash
/// after about a third was answered; then
/// every value is read back and compared, and `COUNT` checks no request line was lost or
/// repeated.
#[test]
fn upload_in_progress() {
    if !kernel_tests_enabled("upload_in_progress") {
        return;
    }
    let _serial = serial();
    const VALUES: usize = 100;
    const VALUE_LEN: usize = 60_000;
    const UPLOAD_PACE: Duration = Duration::from_millis(15);
    let rig = start_rig("fcu", ServiceFamily::V4, 32);
    let service = rig.lab.service();
    let total: u64 = (0..VALUES)
        .map(|i| format!("SET u{i} \n").len() as u64 + VALUE_LEN as u64)
        .sum();
    // Lines written, and client bytes the server acknowledged (TCP_INFO, SYN included).
    let written = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let client = {
        let (written, acked) = (written.clone(), acked.clone());
        rig.lab
            .client
            .spawn(move || -> Result<(Duration, u64), String> {
                let mut client = KvClient::connect(service, Duration::from_secs(5))
                    .map_err(|e| format!("connect: {e}"))?;
                let writer = client.writer.try_clone().map_err(|e| e.to_string())?;
                // The sender writes paced lines and samples how far the server acknowledged:
                // the upload's stall is the longest time that did not move while bytes were
                // outstanding (kvd batches its OKs while requests keep coming, so the
                // answers say little about the upload's progress).
                let sender = std::thread::spawn(move || -> Result<Duration, String> {
                    let mut sent = 1u64; // the SYN
                    let mut stall = Duration::ZERO;
                    let mut last = (0u64, Instant::now());
                    let deadline = Instant::now() + TEST_LIMIT;
                    let mut sample = |sent: u64, stall: &mut Duration| -> Result<u64, String> {
                        let now = socket_tcp_info(&writer)
                            .map_err(|e| format!("TCP_INFO: {e}"))?
                            .bytes_acked;
                        acked.store(now, Ordering::SeqCst);
                        if now > last.0 {
                            // (a write blocked while nothing was acknowledged counts too)
                            *stall = (*stall).max(last.1.elapsed());
                            last = (now, Instant::now());
                        } else if now >= sent {
                            // nothing outstanding: no stall is running
                            last.1 = Instant::now();
                        }
                        Ok(now)
                    };
                    for i in 0..VALUES {
                        let line = format!("SET u{i} {}\n", kv_text(i as u64, VALUE_LEN));
                        (&writer)
                            .write_all(line.as_bytes())
                            .map_err(|e| format!("sending line {i}: {e}"))?;
                        sent += line.len() as u64;
                        written.fetch_add(1, Ordering::SeqCst);
                        // Paced, so the bytes are still on their way (not all in the
                        // server's receive buffer) when the crash comes.
                        for _ in 0..3 {
                            std::thread::sleep(UPLOAD_PACE / 3);
                            sample(sent, &mut stall)?;
                        }
                    }
                    while sample(sent, &mut stall)? < sent {
                        if Instant::now() > deadline {
                            return Err("the upload was never acknowledged".into());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(stall)
                });
                for i in 0..VALUES {
                    let _ = client.oracle.handle(format!("SET u{i} x").as_bytes());
                    client.expect_line("OK\n", &format!("SET u{i}"))?;
                }
                let upload_stall = sender.join().map_err(|_| "sender panicked".to_string())??;
                let mut checksum = 0xcbf2_9ce4_8422_2325u64;
                for i in 0..VALUES {
                    let value = kv_text(i as u64, VALUE_LEN);
                    let started = Instant::now();
                    client
                        .writer
                        .write_all(format!("GET u{i}\n").as_bytes())
                        .map_err(|e| format!("GET: {e}"))?;
                    client.expect_line(&format!("VALUE {value}\n"), &format!("GET u{i}"))?;
                    client.longest_stall = client.longest_stall.max(started.elapsed());
                    for &b in value.as_bytes() {
                        checksum = (checksum ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                    }
                }
                // VALUES SETs, VALUES GETs, and COUNT itself.
                client.expect_count(2 * VALUES as u64 + 1)?;
                Ok((client.quit()?.max(upload_stall), checksum))
            })
            .expect("client thread")
    };
    assert!(
        wait_until(TEST_LIMIT, || written.load(Ordering::SeqCst) >= VALUES / 3),
        "the upload progresses"
    );
    let acked_at_crash = acked.load(Ordering::SeqCst);
    let (result, exit) = crash_and_join(rig, client);
    let (stall, checksum) = result.unwrap_or_else(|e| panic!("upload failed: {e}; {exit:?}"));
    print_stall(
        "upload_in_progress",
        stall,
        &format!(
            "{total} bytes uploaded ({acked_at_crash} acknowledged at the crash) and read back (FNV-1a {checksum:016x}); restored {}",
            exit.restored.len()
        ),
    );
    assert!(
        acked_at_crash < total,
        "the crash came after the upload ({acked_at_crash} of {total} bytes acknowledged)"
    );
    assert_restored_cleanly(&exit, 1);
}

/// `STREAM 8000000 42` with the crash after 2 MB: every byte and the checksum verified.
#[test]
fn download_in_progress() {
    if !kernel_tests_enabled("download_in_progress") {
        return;
    }
    let _serial = serial();
    const LEN: u64 = 8_000_000;
    let rig = start_rig("fcd", ServiceFamily::V4, 33);
    let service = rig.lab.service();
    let received = Arc::new(AtomicUsize::new(0));
    let client = {
        let received = received.clone();
        rig.lab
            .client
            .spawn(move || -> Result<Duration, String> {
                let mut client = KvClient::connect(service, Duration::from_secs(5))
                    .map_err(|e| format!("connect: {e}"))?;
                client.request("SET before crash")?;
                client.stream(LEN, 42, &received)?;
                client.request("GET before")?;
                client.request("PING")?;
                client.quit()
            })
            .expect("client thread")
    };
    assert!(
        wait_until(TEST_LIMIT, || received.load(Ordering::SeqCst) >= 2_000_000),
        "the download progresses"
    );
    let received_at_crash = received.load(Ordering::SeqCst);
    let (result, exit) = crash_and_join(rig, client);
    let stall = result.unwrap_or_else(|e| panic!("download failed: {e}; {exit:?}"));
    print_stall(
        "download_in_progress",
        stall,
        &format!(
            "{LEN} stream bytes verified ({received_at_crash} received at the crash); restored {}",
            exit.restored.len()
        ),
    );
    assert!(
        (received_at_crash as u64) < LEN,
        "the crash came after the download"
    );
    assert_restored_cleanly(&exit, 1);
}

/// 16 connections with per-connection state, idle at the crash; then each is used again
/// and must still hold its state.
#[test]
fn idle_connections() {
    if !kernel_tests_enabled("idle_connections") {
        return;
    }
    let _serial = serial();
    const CONNECTIONS: usize = 16;
    let mut rig = start_rig("fci", ServiceFamily::V4, 34);
    let service = rig.lab.service();
    let mut clients: Vec<KvClient> = rig
        .lab
        .client
        .run(|| {
            (0..CONNECTIONS)
                .map(|_| KvClient::connect(service, Duration::from_secs(5)).expect("connect"))
                .collect()
        })
        .expect("in the client namespace");
    for (i, c) in clients.iter_mut().enumerate() {
        c.request(&format!("SET name connection {i}"))
            .expect("before the crash");
        c.request(&format!("INCR n {i}")).expect("before the crash");
    }
    // Idle: every answer was received (sync mode: the backup holds all of it).
    std::thread::sleep(Duration::from_millis(200));
    let crashed_at = crash(&mut rig).expect("crash the primary");
    let users: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || -> Result<Duration, String> {
                c.request("GET name")?;
                c.request(&format!("INCR n {i}"))?;
                c.request("COUNT")?;
                c.quit()
            })
        })
        .collect();
    let results: Vec<_> = users
        .into_iter()
        .map(|u| u.join().expect("client thread"))
        .collect();
    let resumed = crashed_at.elapsed();
    let exit = finish(rig).expect("the backup agent");
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "connections failed: {failed:?}; {exit:?}"
    );
    let stall = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .max()
        .copied()
        .unwrap_or_default();
    print_stall(
        "idle_connections",
        stall,
        &format!(
            "{CONNECTIONS} connections resumed within {:.0} ms of the crash; restored {}",
            resumed.as_secs_f64() * 1e3,
            exit.restored.len()
        ),
    );
    assert_restored_cleanly(&exit, CONNECTIONS);
}

/// Debian's `socat`, unmodified, as the client: requests on its stdin, its stdout compared
/// byte for byte with what kvd must answer; the crash comes while it receives a 3 MB stream.
#[test]
fn unmodified_socat_client() {
    if !kernel_tests_enabled("unmodified_socat_client") {
        return;
    }
    if std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "socat is missing (apt-get install socat); CI=true requires it"
        );
        eprintln!(
            "unmodified_socat_client: skipped, socat is not installed (apt-get install socat)"
        );
        return;
    }
    let _serial = serial();
    let mut rig = start_rig("fcs", ServiceFamily::V4, 35);
    let target = format!("TCP:{}", rig.lab.service());
    let mut child = rig
        .lab
        .client
        .command("socat")
        .args(["-t", "5", "-T", "60", "-", &target])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start socat");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    // Each chunk socat printed, with when it was read.
    let (chunks, output) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || chunks.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut oracle = Session::new();
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    let mut stall = Duration::ZERO;
    // When the client last heard from the server or sent a request: the stall is the longest
    // gap from there to the next chunk while an answer is awaited (chunks are timed by the
    // reader thread, so a gap spent in the crash counts too).
    let mut last = Instant::now();
    // Sends `line` (if any), adds its answer to `expected`, and waits until socat printed
    // it, or only the first `partial` bytes of it.
    let mut exchange =
        |line: Option<&str>, partial: Option<usize>, seen: &mut Vec<u8>, expected: &mut Vec<u8>| {
            let before = expected.len();
            if let Some(line) = line {
                last = Instant::now();
                stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .expect("write to socat");
                stdin.flush().expect("flush");
                match oracle.handle(line.as_bytes()) {
                    Reply::Line(text) => expected.extend_from_slice(format!("{text}\n").as_bytes()),
                    Reply::Bye => expected.extend_from_slice(b"BYE\n"),
                    Reply::Stream { len, seed } => {
                        let mut generator = StreamGenerator::new(seed, len);
                        let mut data = vec![0u8; len as usize];
                        generator.fill(&mut data);
                        expected.extend_from_slice(format!("DATA {len}\n").as_bytes());
                        expected.extend_from_slice(&data);
                        expected
                            .extend_from_slice(format!("\n{}\n", generator.sum_line()).as_bytes());
                    }
                }
            }
            let until = partial.map_or(expected.len(), |p| before + p);
            let deadline = Instant::now() + KV_CLIENT_TIMEOUT;
            while seen.len() < until {
                let left = deadline.saturating_duration_since(Instant::now());
                match output.recv_timeout(left) {
                    Ok((at, chunk)) => {
                        seen.extend_from_slice(&chunk);
                        stall = stall.max(at.saturating_duration_since(last));
                        last = at;
                    }
                    Err(_) => {
                        stall = stall.max(last.elapsed());
                        break;
                    }
                }
            }
        };
    for i in 0..5 {
        exchange(
            Some(&format!("SET key{i} value {i}")),
            None,
            &mut seen,
            &mut expected,
        );
    }
    // The crash comes while socat receives a 3 MB stream.
    exchange(
        Some("STREAM 3000000 5"),
        Some(300_000),
        &mut seen,
        &mut expected,
    );
    let seen_at_crash = seen.len();
    crash(&mut rig).expect("crash the primary");
    exchange(None, None, &mut seen, &mut expected);
    for i in 0..5 {
        exchange(Some(&format!("GET key{i}")), None, &mut seen, &mut expected);
        exchange(
            Some(&format!("INCR counter {i}")),
            None,
            &mut seen,
            &mut expected,
        );
    }
    exchange(Some("STREAM 300000 6"), None, &mut seen, &mut expected);
    exchange(Some("COUNT"), None, &mut seen, &mut expected);
    exchange(Some("QUIT"), None, &mut seen, &mut expected);
    drop(stdin);
    // socat ends once the server closed; bounded.
    let ended = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().expect("socat status");
    let _ = reader.join();
    while let Ok((_, chunk)) = output.try_recv() {
        seen.extend_from_slice(&chunk);
    }
    let mut errors = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut errors);
    }
    let exit = finish(rig).expect("the backup agent");
    print_stall(
        "unmodified_socat_client",
        stall,
        &format!(
            "{} bytes from socat compared ({seen_at_crash} printed at the crash); restored {}",
            seen.len(),
            exit.restored.len()
        ),
    );
    assert!(ended, "socat did not end after QUIT");
    if seen != expected {
        let at = seen
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(seen.len().min(expected.len()));
        panic!(
            "socat printed {} bytes, expected {}; first difference at byte {at}; socat said {errors:?}; {exit:?}",
            seen.len(),
            expected.len()
        );
    }
    assert!(status.success(), "socat exited with {status}: {errors}");
    assert_eq!(exit.restored.len(), 1, "{exit:?}");
}

/// Service address 2001:db8::10/64: connections exchanging requests all along, the crash
/// mid-traffic; every answer checked, each connection closed cleanly.
#[test]
fn ipv6_service_address() {
    if !kernel_tests_enabled("ipv6_service_address") {
        return;
    }
    let _serial = serial();
    const CONNECTIONS: usize = 4;
    const REQUESTS: usize = 600;
    let mut rig = start_rig("fc6", ServiceFamily::V6, 36);
    let service = rig.lab.service();
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let answered = answered.clone();
            rig.lab
                .client
                .spawn(move || -> Result<Duration, String> {
                    let mut client = KvClient::connect(service, Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))?;
                    let deadline = Instant::now() + TEST_LIMIT;
                    for i in 0..REQUESTS {
                        if Instant::now() > deadline {
                            return Err(format!("out of time after {i} requests"));
                        }
                        client.request(&format!("ECHO {c} {i} {}", kv_text(i as u64, 100 + i)))?;
                        client.request(&format!("INCR total {i}"))?;
                        answered.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(3));
                    }
                    client.request("COUNT")?;
                    client.quit()
                })
                .expect("client thread")
        })
        .collect();
    assert!(
        wait_until(TEST_LIMIT, || answered.load(Ordering::SeqCst)
            >= CONNECTIONS * 50),
        "traffic on every connection"
    );
    crash(&mut rig).expect("crash the primary");
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let exit = finish(rig).expect("the backup agent");
    let kept = results.iter().filter(|r| r.is_ok()).count();
    let stall = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .max()
        .copied()
        .unwrap_or_default();
    print_stall(
        "ipv6_service_address",
        stall,
        &format!(
            "{kept} of {CONNECTIONS} connections kept; restored {}, reset {:?}",
            exit.restored.len(),
            exit.reset
        ),
    );
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "connections failed: {failed:?}; {exit:?}"
    );
    assert!(kept >= 1);
    assert_eq!(exit.restored.len(), CONNECTIONS, "{exit:?}");
}

/// A connection the crash catches between its SYN-ACK and its third ACK: the client is
/// ESTABLISHED (output commit let the SYN-ACK out once the backup held the handshake), but the
/// primary never saw the third ACK nor the first request, so the backup holds the connection in
/// SYN-RECEIVED. The backup must restore it established, or the client's retransmitted request
/// meets the standby's listener and a reset. A filter on the primary drops every non-SYN
/// segment of that one connection, so the state is reached every run, not by chance.
#[test]
fn third_ack_lost_before_the_crash() {
    if !kernel_tests_enabled("third_ack_lost_before_the_crash") {
        return;
    }
    let _serial = serial();
    const CLIENT_PORT: u16 = 45123;
    let mut rig = start_rig("fc3", ServiceFamily::V4, 36);
    let service = rig.lab.service();
    let port = CLIENT_PORT.to_string();
    rig.lab
        .primary
        .exec(
            "iptables",
            &[
                "-I",
                "INPUT",
                "1",
                "-p",
                "tcp",
                "--dport",
                "7000",
                "--sport",
                &port,
                "--tcp-flags",
                "SYN",
                "NONE",
                "-j",
                "DROP",
            ],
        )
        .expect("filter the third ACK on the primary");
    let mut client = rig
        .lab
        .client
        .run(move || connect_from_port(service, CLIENT_PORT))
        .expect("in the client namespace")
        .expect("the handshake completes on the client");
    // The first request leaves the client and is dropped on the primary like the third ACK.
    client
        .writer
        .write_all(b"SET greeting hello\n")
        .expect("send the first request");
    std::thread::sleep(Duration::from_millis(300));
    let crashed_at = crash(&mut rig).expect("crash the primary");
    let expected = match client.oracle.handle(b"SET greeting hello") {
        Reply::Line(text) => format!("{text}\n"),
        other => panic!("unexpected oracle reply {other:?}"),
    };
    let first = client.expect_line(&expected, "SET greeting hello");
    let rest = first.and_then(|()| {
        client.request("GET greeting")?;
        client.request("COUNT")?;
        client.quit()
    });
    let resumed = crashed_at.elapsed();
    let exit = finish(rig).expect("the backup agent");
    let id_port = CLIENT_PORT;
    assert!(
        rest.is_ok(),
        "the connection did not survive: {rest:?}; {exit:?}"
    );
    assert!(
        exit.restored.iter().any(|id| id.client.port() == id_port),
        "the connection was not restored: {exit:?}"
    );
    print_stall(
        "third_ack_lost_before_the_crash",
        resumed,
        "the client's first request was answered by the backup",
    );
}

/// Connects from a fixed client port (so the primary's filter can single the connection out).
fn connect_from_port(service: SocketAddr, port: u16) -> std::io::Result<KvClient> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(service) = service else {
        return Err(std::io::Error::other("IPv4 service expected"));
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    let local = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 1), port);
    bind(fd.as_raw_fd(), &SockaddrIn::from(local))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(service))?;
    KvClient::from_stream(TcpStream::from(fd))
}
