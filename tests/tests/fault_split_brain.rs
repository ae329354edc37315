//! No split brain, end to end with the real agents (sync mode) on a lab whose replication
//! link has a network of its own ([`FailoverLab::with_replication_network`]).
//!
//! - `replication_link_cut_without_crash_is_no_takeover`: only the primary's replication
//!   attachment is cut while it keeps serving. The backup misses the heartbeats, probes the
//!   service address, finds it answered by the primary and refuses the takeover: its view
//!   stays `backup` with a refusal counted and an alert, the address is not on its `eth0`,
//!   and every client keeps being answered correctly by the primary (which degrades to
//!   async after its short `degrade_after`). Then the primary really crashes: the backup
//!   takes over, the idle connections (no traffic during the cut, so the backup holds all of
//!   them) continue byte-exact, a new connection works. Connections busy during the cut may
//!   be lost (their bytes after the cut never reached the backup): they either complete
//!   correctly or fail, never with a wrong byte.
//! - `returning_heartbeats_resume_protection` (IPv6 service address): the replication
//!   attachment is cut until the backup refuses the takeover, then plugged back in: the backup's view goes back to plain
//!   protection (no alert, no lag, link up, still `backup`), and a crash afterwards is taken
//!   over with every connection continuing byte-exact, those opened before the cut and one
//!   opened after the link came back.
//! - `fencing_failure_aborts_the_takeover`: the fencing command fails until a file exists.
//!   After the crash the backup does not take over (refusals counted, alert, address absent,
//!   nothing fenced); once the file exists the takeover happens, the command saw the service
//!   address in `CTTM_SERVICE_ADDRESSES`, and the idle connections continue byte-exact.
//!
//! Every client checks each answer against kvd's oracle (`KvClient`); every socket has
//! timeouts and every loop a deadline and a count bound.

// The shared rig; this file uses only `start_observed` of its starters.
#[allow(dead_code)]
mod failover_agents;

use cttm_tests::failover_lab::{
    FailoverLab, KvClient, REPLICATION_INTERFACE, ServiceFamily, kv_text, wait_until,
};
use cttm_tests::lab::{Netns, kernel_tests_enabled};
use cttm_tests::temp_dir::TempDir;
use cttmd::observe::{AgentRole, AgentView, Observer, ProtectionState};
use cttmd::options::{CommitMode, FenceOptions};
use failover_agents::{crash, finish, start_observed};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// NFQUEUE queues of this file's primaries (60-69 are this file's).
const QUEUE_CUT: u16 = 60;
const QUEUE_FENCE: u16 = 61;
const QUEUE_RESUME: u16 = 62;
/// The primary stops holding this long after its backup went silent (it keeps serving).
const DEGRADE_AFTER: Duration = Duration::from_millis(300);
/// How long the cut (or the refused takeover) is watched: well past the backup's failure
/// detection (8 x 50 ms heartbeats) and its first probe.
const WATCH_REFUSAL: Duration = Duration::from_secs(2);
/// The longest any wait in these tests may take.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Connection timeout of the clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests each idle connection makes before the cut (and again after the takeover).
const IDLE_ROUNDS: usize = 5;

/// One request/response round of connection `c`: an echo of a varied line, a counter.
fn round(client: &mut KvClient, c: usize, round: usize) -> Result<(), String> {
    let line = kv_text((c * 100_000 + round) as u64, 20 + (round * 13) % 200);
    client.request(&format!("ECHO {c} {round} {line}"))?;
    client.request(&format!("INCR n{c} {round}"))
}

/// An error that shows a wrong byte (the oracle disagreed), as opposed to a connection that
/// ended or hung.
fn is_corruption(error: &str) -> bool {
    error.contains("wrong answer") || error.contains("differs") || error.contains("after BYE")
}

/// Opens `count` connections from the client host (the sockets stay in its namespace and
/// are used from this thread afterwards), each making [`IDLE_ROUNDS`] requests.
fn idle_clients(client: &Netns, service: SocketAddr, count: usize) -> Vec<KvClient> {
    (0..count)
        .map(|c| {
            let mut kv = client
                .run(move || KvClient::connect(service, CONNECT_TIMEOUT))
                .expect("in the client host")
                .expect("connect an idle client");
            for r in 0..IDLE_ROUNDS {
                round(&mut kv, c, r).unwrap_or_else(|e| panic!("idle client {c}: {e}"));
            }
            kv
        })
        .collect()
}

/// After the takeover: each idle connection makes more requests and closes (`COUNT`
/// checked, `QUIT`): all must succeed, byte-exact.
fn resume_idle(clients: Vec<KvClient>) -> Vec<Result<Duration, String>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(c, mut kv)| {
            for r in IDLE_ROUNDS..2 * IDLE_ROUNDS {
                round(&mut kv, c, r).map_err(|e| format!("idle client {c}, round {r}: {e}"))?;
            }
            kv.finish()
                .map_err(|e| format!("idle client {c}, closing: {e}"))
        })
        .collect()
}

/// A fresh connection makes a few requests and closes cleanly.
fn new_connection_works(client: &Netns, service: SocketAddr, c: usize) -> Result<(), String> {
    client
        .run(move || -> Result<(), String> {
            let mut kv =
                KvClient::connect(service, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
            for r in 0..3 {
                round(&mut kv, c, r)?;
            }
            kv.finish().map(|_| ())
        })
        .map_err(|e| e.to_string())?
}

/// True when `host`'s `eth0` carries `address`.
fn carries(host: &Netns, address: IpAddr) -> bool {
    let out = host
        .ip(&["-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    out.contains(&format!(" {address}/"))
}

/// Crashes the primary and waits for the backup's takeover (its view: serving, one
/// takeover).
fn crash_and_take_over(rig: &mut failover_agents::Rig, backup: &Observer) {
    crash(rig).expect("crash the primary");
    let serving = wait_for_view(backup, |v| v.role == AgentRole::Serving);
    assert_eq!(
        serving.role,
        AgentRole::Serving,
        "no takeover after the crash: {serving:?}"
    );
    assert_eq!(serving.counters.takeovers, 1, "{serving:?}");
}

/// Waits (bounded) until the backup's view satisfies `done`; returns the last view.
fn wait_for_view(observer: &Observer, mut done: impl FnMut(&AgentView) -> bool) -> AgentView {
    let mut last = observer.view();
    wait_until(WAIT_LIMIT, || {
        last = observer.view();
        done(&last)
    });
    last
}

/// A connection looping requests on its own thread until `stop`.
struct Busy {
    thread: std::thread::JoinHandle<Result<usize, String>>,
}

fn busy_client(
    client: &Netns,
    service: SocketAddr,
    c: usize,
    rounds: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Busy {
    let thread = client
        .spawn(move || -> Result<usize, String> {
            let mut kv = KvClient::connect(service, CONNECT_TIMEOUT)
                .map_err(|e| format!("busy client {c}: connect: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut done = 0;
            for r in 0..200_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                round(&mut kv, c, r).map_err(|e| format!("busy client {c}, round {r}: {e}"))?;
                done = r + 1;
                rounds.store(done, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            kv.finish()
                .map_err(|e| format!("busy client {c}, closing: {e}"))?;
            Ok(done)
        })
        .expect("busy client thread");
    Busy { thread }
}

#[test]
fn replication_link_cut_without_crash_is_no_takeover() {
    if !kernel_tests_enabled("replication_link_cut_without_crash_is_no_takeover") {
        return;
    }
    const IDLE: usize = 4;
    const BUSY: usize = 4;
    let lab = FailoverLab::with_replication_network("sbcut", ServiceFamily::V4).expect("lab");
    let (mut rig, watchers) = start_observed(lab, CommitMode::Sync, QUEUE_CUT, |primary, _| {
        primary.degrade_after = DEGRADE_AFTER;
    })
    .expect("both agents running, replication link up");
    let service = rig.lab.service();
    let address = service.ip();

    let idle = idle_clients(&rig.lab.client, service, IDLE);
    let stop_busy = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicUsize>> = (0..BUSY).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let busy: Vec<Busy> = (0..BUSY)
        .map(|b| {
            busy_client(
                &rig.lab.client,
                service,
                IDLE + b,
                rounds[b].clone(),
                stop_busy.clone(),
            )
        })
        .collect();
    let under_way = wait_until(WAIT_LIMIT, || {
        rounds.iter().all(|r| r.load(Ordering::SeqCst) >= 20)
    });
    assert!(under_way, "the busy clients did not get under way");
    // The backup's view lists every connection as protected, with what it replicated.
    let protected = wait_for_view(&watchers.backup, |v| {
        v.count(ProtectionState::Protected) >= IDLE + BUSY
    });
    assert_eq!(protected.role, AgentRole::Backup, "{protected:?}");
    assert_eq!(
        protected.count(ProtectionState::Protected),
        IDLE + BUSY,
        "{protected:?}"
    );
    assert!(protected.link_up, "{protected:?}");
    assert_eq!(protected.lag_ms, 0, "{protected:?}");
    assert!(protected.alerts.is_empty(), "{:?}", protected.alerts);
    assert!(
        protected.counters.connections_opened >= (IDLE + BUSY) as u64,
        "{:?}",
        protected.counters
    );
    assert!(
        protected.counters.bytes_replicated_client > 0
            && protected.counters.bytes_replicated_server > 0,
        "{:?}",
        protected.counters
    );

    // Cut only the primary's replication attachment: the primary keeps serving.
    let cut_at = Instant::now();
    rig.lab
        .lab()
        .cut_attachment(&rig.lab.primary, REPLICATION_INTERFACE)
        .expect("cut the replication attachment");
    let at_cut: Vec<usize> = rounds.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    let refused = wait_for_view(&watchers.backup, |v| v.counters.takeovers_refused >= 1);
    std::thread::sleep(WATCH_REFUSAL.saturating_sub(cut_at.elapsed()));
    let during = watchers.backup.view();
    let backup_has_address = carries(&rig.lab.backup, address);
    let primary_has_address = carries(&rig.lab.primary, address);
    let during_cut = new_connection_works(&rig.lab.client, service, 100);
    let progress: Vec<usize> = rounds
        .iter()
        .zip(&at_cut)
        .map(|(r, before)| r.load(Ordering::SeqCst) - before)
        .collect();
    println!(
        "replication_link_cut_without_crash_is_no_takeover: during the cut: busy rounds {progress:?}, refused {}, alerts {:?}",
        during.counters.takeovers_refused, during.alerts
    );
    assert!(
        refused.counters.takeovers_refused >= 1,
        "no refusal: {refused:?}"
    );
    assert_eq!(
        during.role,
        AgentRole::Backup,
        "the backup took over: {during:?}"
    );
    assert_eq!(during.counters.takeovers, 0, "{during:?}");
    assert!(during.counters.takeovers_refused >= 1, "{during:?}");
    assert!(
        during
            .alerts
            .iter()
            .any(|a| a.contains("takeover refused") && a.contains(&address.to_string())),
        "no refusal alert: {:?}",
        during.alerts
    );
    assert!(
        during.lag_ms >= 1000,
        "the primary has been silent for over a second: {during:?}"
    );
    assert!(
        !backup_has_address,
        "the backup claimed {address} while the primary serves"
    );
    assert!(primary_has_address, "the primary lost {address}");
    during_cut.expect("a new connection during the cut (served by the primary)");
    assert!(
        progress.iter().all(|&p| p > 0),
        "busy clients stalled during the cut: {progress:?}"
    );
    assert!(
        busy.iter().all(|b| !b.thread.is_finished()),
        "a busy client ended during the cut"
    );

    // Now the primary really crashes: the backup takes over.
    crash_and_take_over(&mut rig, &watchers.backup);
    assert!(
        carries(&rig.lab.backup, address),
        "the backup does not carry {address}"
    );
    let idle_results = resume_idle(idle);
    stop_busy.store(true, Ordering::SeqCst);
    let busy_results: Vec<Result<usize, String>> = busy
        .into_iter()
        .map(|b| b.thread.join().expect("busy client thread"))
        .collect();
    let after = new_connection_works(&rig.lab.client, service, 101);
    let exit = finish(rig).expect("the backup agent");
    println!(
        "replication_link_cut_without_crash_is_no_takeover: after the takeover: idle {idle_results:?}, busy {busy_results:?}; restored {}, reset {}, ended {:?}",
        exit.restored.len(),
        exit.reset.len(),
        exit.ended
    );

    for (c, result) in idle_results.iter().enumerate() {
        assert!(
            result.is_ok(),
            "idle connection {c} did not survive: {result:?}"
        );
    }
    for result in &busy_results {
        if let Err(e) = result {
            assert!(!is_corruption(e), "a busy connection saw a wrong byte: {e}");
        }
    }
    after.expect("a new connection after the takeover");
    assert!(exit.takeover.is_some(), "{exit:?}");
    assert!(exit.restored.len() >= IDLE, "{exit:?}");
    // The serving view: the lost busy connections are listed as lost with the reason, the
    // idle ones closed normally and left the list.
    let lost = busy_results.iter().filter(|r| r.is_err()).count();
    let served = watchers.backup.view();
    assert_eq!(served.role, AgentRole::Serving);
    assert!(served.failover_ms.is_some(), "{served:?}");
    assert_eq!(served.count(ProtectionState::Lost), lost, "{served:?}");
    assert!(
        served
            .connections
            .iter()
            .all(|c| c.state != ProtectionState::Lost || c.detail.is_some()),
        "{served:?}"
    );
}

#[test]
fn fencing_failure_aborts_the_takeover() {
    if !kernel_tests_enabled("fencing_failure_aborts_the_takeover") {
        return;
    }
    const IDLE: usize = 3;
    let fence = TempDir::new("sb-fence");
    let dir = fence.root().to_path_buf();
    let allow = dir.join("allow");
    let fenced = dir.join("fenced");
    let command = format!(
        "test -e '{}' && echo \"$CTTM_SERVICE_ADDRESSES\" >> '{}'",
        allow.display(),
        fenced.display()
    );
    let lab = FailoverLab::with_replication_network("sbfen", ServiceFamily::V4).expect("lab");
    let (mut rig, watchers) = start_observed(lab, CommitMode::Sync, QUEUE_FENCE, |_, backup| {
        backup.fence = Some(FenceOptions {
            command,
            timeout: Duration::from_secs(5),
        });
    })
    .expect("both agents running, replication link up");
    let service = rig.lab.service();
    let address = service.ip();
    let idle = idle_clients(&rig.lab.client, service, IDLE);
    let protected = wait_for_view(&watchers.backup, |v| v.connections.len() >= IDLE);
    assert!(protected.connections.len() >= IDLE, "{protected:?}");

    let crashed_at = crash(&mut rig).expect("crash the primary");
    let refused = wait_for_view(&watchers.backup, |v| v.counters.takeovers_refused >= 1);
    std::thread::sleep(WATCH_REFUSAL.saturating_sub(crashed_at.elapsed()));
    let during = watchers.backup.view();
    let backup_has_address = carries(&rig.lab.backup, address);
    println!(
        "fencing_failure_aborts_the_takeover: while fencing fails: refused {}, alerts {:?}",
        during.counters.takeovers_refused, during.alerts
    );
    assert!(refused.counters.takeovers_refused >= 1, "{refused:?}");
    assert_eq!(
        during.role,
        AgentRole::Backup,
        "took over despite the failed fence: {during:?}"
    );
    assert_eq!(during.counters.takeovers, 0, "{during:?}");
    assert!(
        during.alerts.iter().any(|a| a.contains("fencing failed")),
        "{:?}",
        during.alerts
    );
    assert!(
        !backup_has_address,
        "the backup claimed {address} without fencing"
    );
    assert!(
        !fenced.exists(),
        "the fencing command succeeded before it was allowed to"
    );

    std::fs::write(&allow, b"").expect("allow fencing");
    let allowed_at = Instant::now();
    let serving = wait_for_view(&watchers.backup, |v| v.role == AgentRole::Serving);
    let took_over_after = allowed_at.elapsed();
    assert_eq!(
        serving.role,
        AgentRole::Serving,
        "no takeover once fencing works: {serving:?}"
    );
    assert_eq!(serving.counters.takeovers, 1, "{serving:?}");
    assert!(
        serving.counters.takeovers_refused >= during.counters.takeovers_refused,
        "{serving:?}"
    );
    assert!(serving.alerts.is_empty(), "{:?}", serving.alerts);
    let marker = std::fs::read_to_string(&fenced).expect("the fencing command's marker");
    assert_eq!(marker.trim(), address.to_string(), "CTTM_SERVICE_ADDRESSES");
    assert!(carries(&rig.lab.backup, address));
    let idle_results = resume_idle(idle);
    let exit = finish(rig).expect("the backup agent");
    println!(
        "fencing_failure_aborts_the_takeover: took over {:.0} ms after fencing was allowed (failover {:?} ms); idle {idle_results:?}; restored {}, reset {}",
        took_over_after.as_secs_f64() * 1e3,
        serving.failover_ms,
        exit.restored.len(),
        exit.reset.len()
    );
    for (c, result) in idle_results.iter().enumerate() {
        assert!(
            result.is_ok(),
            "idle connection {c} did not survive: {result:?}"
        );
    }
    assert_eq!(exit.restored.len(), IDLE, "{exit:?}");
    assert!(exit.reset.is_empty(), "{exit:?}");
}

#[test]
fn returning_heartbeats_resume_protection() {
    if !kernel_tests_enabled("returning_heartbeats_resume_protection") {
        return;
    }
    const IDLE: usize = 3;
    // IPv6: the refusal comes from the primary's neighbour advertisement (RFC 4862 DAD).
    let lab = FailoverLab::with_replication_network("sbres", ServiceFamily::V6).expect("lab");
    let (mut rig, watchers) = start_observed(lab, CommitMode::Sync, QUEUE_RESUME, |primary, _| {
        primary.degrade_after = DEGRADE_AFTER;
    })
    .expect("both agents running, replication link up");
    let service = rig.lab.service();
    let mut idle = idle_clients(&rig.lab.client, service, IDLE);
    let protected = wait_for_view(&watchers.backup, |v| {
        v.count(ProtectionState::Protected) >= IDLE
    });
    assert_eq!(
        protected.count(ProtectionState::Protected),
        IDLE,
        "{protected:?}"
    );

    rig.lab
        .lab()
        .cut_attachment(&rig.lab.primary, REPLICATION_INTERFACE)
        .expect("cut the replication attachment");
    let refused = wait_for_view(&watchers.backup, |v| v.counters.takeovers_refused >= 1);
    assert!(refused.counters.takeovers_refused >= 1, "{refused:?}");
    assert_eq!(refused.role, AgentRole::Backup, "{refused:?}");
    let address = service.ip().to_string();
    assert!(
        refused
            .alerts
            .iter()
            .any(|a| a.contains("takeover refused") && a.contains(&address)),
        "{:?}",
        refused.alerts
    );
    assert!(!carries(&rig.lab.backup, service.ip()));
    rig.lab
        .lab()
        .reconnect_attachment(&rig.lab.primary, REPLICATION_INTERFACE)
        .expect("plug the replication attachment back in");
    let resumed = wait_for_view(&watchers.backup, |v| {
        v.alerts.is_empty() && v.link_up && v.lag_ms == 0
    });
    println!(
        "returning_heartbeats_resume_protection: resumed view: role {:?}, refused {}, connections {:?}",
        resumed.role,
        resumed.counters.takeovers_refused,
        resumed
            .connections
            .iter()
            .map(|c| (c.state, c.detail.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        resumed.alerts.is_empty(),
        "alerts stay: {:?}",
        resumed.alerts
    );
    assert!(resumed.link_up && resumed.lag_ms == 0, "{resumed:?}");
    assert_eq!(resumed.role, AgentRole::Backup, "{resumed:?}");
    assert_eq!(resumed.counters.takeovers, 0, "{resumed:?}");

    // A connection opened once the link is back is protected again, as are the idle ones.
    idle.extend(idle_clients(&rig.lab.client, service, 1));
    let protected = wait_for_view(&watchers.backup, |v| {
        v.count(ProtectionState::Protected) > IDLE
    });
    assert_eq!(
        protected.count(ProtectionState::Protected),
        IDLE + 1,
        "{protected:?}"
    );

    crash_and_take_over(&mut rig, &watchers.backup);
    let idle_results = resume_idle(idle);
    let exit = finish(rig).expect("the backup agent");
    println!(
        "returning_heartbeats_resume_protection: after the takeover: {idle_results:?}; restored {}, reset {:?}",
        exit.restored.len(),
        exit.reset
    );
    for (c, result) in idle_results.iter().enumerate() {
        assert!(result.is_ok(), "connection {c} did not survive: {result:?}");
    }
    assert_eq!(exit.restored.len(), IDLE + 1, "{exit:?}");
}
