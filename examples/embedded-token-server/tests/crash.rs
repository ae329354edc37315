//! The embedding example's crash test: the token server runs on a primary and a backup host
//! (network namespaces), each side embedding its CTTM agent through the library API alone.
//! Clients keep requesting tokens on every connection while the primary is cut off the
//! network mid-stream and stopped. Every connection must continue on the backup with one
//! consistent stream: no reset, no gap, no duplicate, every reply exactly the one a server
//! wrote last for that connection and number (a reply made again after the primary's was
//! discarded replaces it; one the client saw never is), every token new.

use cttm_core::endpoint::ConnectionId;
use cttm_embedded_token_server::protocol::Reply;
use cttm_embedded_token_server::{
    BackupSide, PrimarySide, ReplyJournal, start_backup, start_primary,
};
use cttm_tests::failover_lab::wait_until;
use cttm_tests::lab::{Lab, kernel_tests_enabled};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVICE: &str = "198.18.0.10:7000";
const REPLICATION: &str = "198.18.0.3:7700";
const KEY: [u8; 32] = *b"embedded token server test key 1";
/// Client connections (each with its own thread).
const CONNECTIONS: usize = 16;
/// Requests each client keeps outstanding (pipelined).
const OUTSTANDING: usize = 2;
/// How long the clients run before the crash.
const BEFORE_CRASH: Duration = Duration::from_millis(1500);
/// Replies each connection must receive after the crash.
const AFTER_CRASH: u64 = 25;
/// How long a client waits for a reply before it counts as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// What one client saw.
#[derive(Debug)]
struct ClientReport {
    replies: u64,
    after_crash: u64,
}

/// Everything the clients share.
struct Shared {
    journal: Arc<ReplyJournal>,
    tokens: Mutex<HashSet<u128>>,
    crashed: AtomicBool,
}

#[test]
fn every_connection_continues_one_consistent_stream_after_the_primary_crashes() {
    if !kernel_tests_enabled("embedded token server crash") {
        return;
    }
    let service: SocketAddr = SERVICE.parse().unwrap();
    let mut lab = Lab::new("tok").expect("lab");
    let client = lab.add_host("c", &["198.18.0.1/24"]).expect("client");
    let primary = lab
        .add_host("p", &["198.18.0.2/24", "198.18.0.10/24"])
        .expect("primary");
    let backup = lab.add_host("b", &["198.18.0.3/24"]).expect("backup");
    let journal = Arc::new(ReplyJournal::default());
    let backup_side = {
        let journal = Arc::clone(&journal);
        backup
            .run(move || {
                start_backup(
                    &BackupSide {
                        service,
                        interface: "eth0".into(),
                        listen: REPLICATION.parse().unwrap(),
                        key: KEY,
                    },
                    Some(journal),
                )
            })
            .expect("backup namespace")
            .expect("backup side")
    };
    let primary_side = {
        let journal = Arc::clone(&journal);
        primary
            .run(move || {
                start_primary(
                    &PrimarySide {
                        service,
                        interface: "eth0".into(),
                        backup: REPLICATION.parse().unwrap(),
                        key: KEY,
                    },
                    Some(journal),
                )
            })
            .expect("primary namespace")
            .expect("primary side")
    };
    assert!(
        wait_until(Duration::from_secs(10), || primary_side.link_up()),
        "the replication link did not come up"
    );

    let shared = Arc::new(Shared {
        journal,
        tokens: Mutex::new(HashSet::new()),
        crashed: AtomicBool::new(false),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let shared = Arc::clone(&shared);
            client
                .spawn(move || request_tokens(service, &shared))
                .expect("client thread")
        })
        .collect();
    std::thread::sleep(BEFORE_CRASH);
    // The crash: nothing the primary sends reaches anyone any more, then its agent and its
    // connections stop (into the void).
    lab.cut(&primary).expect("cut the primary");
    let ran_for = started.elapsed();
    shared.crashed.store(true, Ordering::SeqCst);
    let primary_exit = primary_side.stop().expect("primary agent");

    let reports: Vec<ClientReport> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            c.join()
                .expect("client panicked")
                .unwrap_or_else(|e| panic!("client {i}: {e}"))
        })
        .collect();
    let backup_exit = backup_side.stop().expect("backup agent");

    assert!(
        backup_exit.reset.is_empty(),
        "connections reset at takeover: {:?}",
        backup_exit.reset
    );
    assert_eq!(backup_exit.resumed.len(), CONNECTIONS, "{backup_exit:?}");
    assert!(reports.iter().all(|r| r.after_crash >= AFTER_CRASH));
    let replies: u64 = reports.iter().map(|r| r.replies).sum();
    assert_eq!(shared.tokens.lock().unwrap().len() as u64, replies);
    assert!(primary_exit.checkpoints > 0 && primary_exit.checkpoints_refused == 0);
    println!(
        "embedded token server crash: {} of {CONNECTIONS} connections kept, {replies} replies \
         ({} before the crash), {} checkpoints in {:.2} s ({:.0} per second), {} bytes \
         discarded at takeover, takeover {:?}",
        backup_exit.resumed.len(),
        replies - reports.iter().map(|r| r.after_crash).sum::<u64>(),
        primary_exit.checkpoints,
        ran_for.as_secs_f64(),
        primary_exit.checkpoints as f64 / ran_for.as_secs_f64(),
        backup_exit.discarded_bytes,
        backup_exit.takeover,
    );
}

/// One client connection: requests tokens (a few outstanding) and checks every reply, until
/// it has [`AFTER_CRASH`] replies after the crash; then closes and expects the server to.
fn request_tokens(service: SocketAddr, shared: &Shared) -> Result<ClientReport, String> {
    let stream = TcpStream::connect_timeout(&service, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let id = ConnectionId {
        client: stream.local_addr().map_err(|e| e.to_string())?,
        server: service,
    };
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut report = ClientReport {
        replies: 0,
        after_crash: 0,
    };
    let mut sent = 0u64;
    let deadline = Instant::now() + BEFORE_CRASH + Duration::from_secs(60);
    loop {
        let done = report.after_crash >= AFTER_CRASH;
        while !done && sent < report.replies + OUTSTANDING as u64 {
            writer
                .write_all(b"NEXT\n")
                .map_err(|e| format!("{id}: request {}: {e}", sent + 1))?;
            sent += 1;
        }
        if done && report.replies == sent {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{id}: deadline passed after {} replies",
                report.replies
            ));
        }
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("{id}: waiting for reply {}: {e}", report.replies + 1))?;
        if n == 0 {
            return Err(format!("{id}: closed after {} replies", report.replies));
        }
        check_reply(shared, &id, report.replies + 1, &line)?;
        report.replies += 1;
        if shared.crashed.load(Ordering::SeqCst) {
            report.after_crash += 1;
        }
    }
    writer
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = String::new();
    match reader.read_line(&mut rest) {
        Ok(0) => Ok(report),
        Ok(_) => Err(format!(
            "{id}: unexpected bytes after the last reply: {rest:?}"
        )),
        Err(e) => Err(format!("{id}: waiting for the server's close: {e}")),
    }
}

/// One reply line: the next number, exactly the line a server wrote last for it, a token
/// never seen before, a plausible time.
fn check_reply(shared: &Shared, id: &ConnectionId, seq: u64, line: &str) -> Result<(), String> {
    let reply = Reply::parse(line).map_err(|e| format!("{id}: reply {seq}: {e}"))?;
    if reply.seq != seq {
        return Err(format!(
            "{id}: expected reply {seq}, got {line:?} (a gap or a duplicate)"
        ));
    }
    match shared.journal.line(id, seq) {
        Some(written) if written == line => {}
        other => {
            return Err(format!(
                "{id}: reply {seq} is {line:?} but the server wrote {other:?} (a replaced reply)"
            ));
        }
    }
    if !shared.tokens.lock().unwrap().insert(reply.token) {
        return Err(format!(
            "{id}: reply {seq} repeats token {:032x}",
            reply.token
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    if reply.time_micros.abs_diff(now) > 120_000_000 {
        return Err(format!(
            "{id}: reply {seq} has an implausible time: {line:?}"
        ));
    }
    Ok(())
}
