//! `cttm-migrate`: a small echo/counter service whose live connections, and the service
//! address they use, move to another host on demand, without the clients noticing.
//!
//! ```text
//! cttm-migrate serve   --listen ADDR:PORT --handoff PEER:PORT [--interface IF] [--prefix-len N] [--admin ADDR:PORT]
//! cttm-migrate receive --control ADDR:PORT --address ADDR/N [--interface IF]
//! cttm-migrate client  --connect ADDR:PORT [--lines N] [--interval-ms MS]
//! ```
//!
//! The service answers every line `L` of a connection with `"<n> L"`, `n` counting that
//! connection's lines from 1; the count and any unfinished line are the per-connection state
//! that travels with the connection. `serve` (host A) migrates every connection to the
//! `receive` instance at `--handoff` (host B) on SIGUSR1, or when a line `migrate` arrives on
//! the `--admin` port. `receive` claims the address, restores the connections, announces the
//! address and carries on serving them (and new clients). `client` checks that the counter
//! never skips or repeats across the move.
//!
//! Exit status: 0 on success, 1 on a runtime failure, 2 on bad arguments.

mod args;
mod counter;

use args::{Command, USAGE, parse};
use counter::CounterConnection;
use cttm_restore::RestoreOptions;
use cttm_restore::migrate::{
    MigrationReport, OutgoingConnection, RecoveredConnections, ServiceAddress, TcpChannel,
    migrate_in_for, migrate_out,
};
use cttm_restore::repair::monotonic_now;
use cttm_restore::takeover::NetlinkTakeover;
use nix::sys::signal::{SigSet, Signal};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the migration channel waits for the peer.
const CHANNEL_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&arguments) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("cttm-migrate: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Serve {
            listen,
            handoff,
            interface,
            prefix_len,
            admin,
        } => serve(listen, handoff, &interface, prefix_len, admin),
        Command::Receive {
            control,
            interface,
            service,
        } => receive(control, &interface, service),
        Command::Client {
            connect,
            lines,
            interval,
        } => client(connect, lines, interval),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cttm-migrate: {message}");
            ExitCode::from(1)
        }
    }
}

/// Sets `flag` whenever SIGUSR1 arrives (the signal is blocked in every thread and taken by
/// `sigwait` in a dedicated one: no signal handler, no unsafe code).
fn watch_sigusr1(flag: Arc<AtomicBool>) -> Result<(), String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.thread_block()
        .map_err(|e| format!("blocking SIGUSR1: {e}"))?;
    std::thread::spawn(move || {
        while set.wait().is_ok() {
            flag.store(true, Ordering::Release);
        }
    });
    Ok(())
}

/// Host A: serve until asked to migrate, then hand every connection to `handoff`.
fn serve(
    listen: SocketAddr,
    handoff: SocketAddr,
    interface: &str,
    prefix_len: u8,
    admin: Option<SocketAddr>,
) -> Result<(), String> {
    let migrate_now = Arc::new(AtomicBool::new(false));
    watch_sigusr1(Arc::clone(&migrate_now))?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let admin = match admin {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(|e| format!("admin port {addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        }
        None => None,
    };
    println!(
        "serving on {listen} (pid {}); migrate to {handoff} with `kill -USR1 {}`{}",
        std::process::id(),
        std::process::id(),
        admin
            .as_ref()
            .map(|_| " or `migrate` on the admin port")
            .unwrap_or("")
    );
    let mut connections: Vec<CounterConnection> = Vec::new();
    let mut admin_client: Option<TcpStream> = None;
    loop {
        accept_all(&listener, &mut connections);
        if let Some(admin) = &admin
            && let Some(stream) = admin_request(admin)
        {
            admin_client = Some(stream);
            migrate_now.store(true, Ordering::Release);
        }
        if migrate_now.swap(false, Ordering::AcqRel) {
            println!("migrating {} connection(s) to {handoff}", connections.len());
            match hand_off(
                std::mem::take(&mut connections),
                listen,
                handoff,
                interface,
                prefix_len,
            ) {
                Ok(report) => {
                    let summary = summarize(&report);
                    println!("{summary}");
                    if let Some(mut admin) = admin_client.take() {
                        let _ = writeln!(admin, "{summary}");
                    }
                    return Ok(());
                }
                Err((message, recovered)) => {
                    eprintln!("migration failed: {message}");
                    if let Some(mut admin) = admin_client.take() {
                        let _ = writeln!(admin, "migration failed: {message}");
                    }
                    match recovered {
                        Some(back) => connections = back,
                        None => return Err("connections left frozen; check the destination".into()),
                    }
                }
            }
        }
        let progressed = serve_step(&mut connections, true);
        if !progressed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Moves the connections; on failure returns them when they are running again here.
type HandOffFailure = (String, Option<Vec<CounterConnection>>);

fn hand_off(
    connections: Vec<CounterConnection>,
    listen: SocketAddr,
    handoff: SocketAddr,
    interface: &str,
    prefix_len: u8,
) -> Result<MigrationReport, HandOffFailure> {
    let outgoing: Vec<OutgoingConnection> = connections
        .into_iter()
        .map(|c| {
            let application_state = c.encode_state();
            OutgoingConnection {
                stream: c.into_stream(),
                application_state,
            }
        })
        .collect();
    let recover = |outgoing: Vec<OutgoingConnection>| -> Vec<CounterConnection> {
        outgoing
            .into_iter()
            .filter_map(|o| CounterConnection::decode(o.stream, &o.application_state).ok())
            .collect()
    };
    let mut takeover = match NetlinkTakeover::open(interface) {
        Ok(t) => t,
        Err(e) => return Err((e.to_string(), Some(recover(outgoing)))),
    };
    let channel = TcpStream::connect_timeout(&handoff, Duration::from_secs(5))
        .and_then(|stream| TcpChannel::new(stream, CHANNEL_TIMEOUT));
    let mut channel = match channel {
        Ok(c) => c,
        Err(e) => {
            return Err((
                format!("connecting to {handoff}: {e}"),
                Some(recover(outgoing)),
            ));
        }
    };
    let service = ServiceAddress {
        address: listen.ip(),
        prefix_len,
    };
    migrate_out(outgoing, service, &mut takeover, &mut channel).map_err(|failure| {
        let message = failure.to_string();
        match failure.connections {
            RecoveredConnections::Running(back) => (message, Some(recover(back))),
            RecoveredConnections::Frozen(_) => (message, None),
        }
    })
}

fn summarize(report: &MigrationReport) -> String {
    format!(
        "moved {} connection(s): {} B send queues, {} B receive queues, {} B application state; \
         freeze+dump {:?}, ship {:?}, release {:?}, destination {:?} (neighbour warm-up {:?}, claim {:?}, restore {:?}, announce {:?}), \
         close {:?}, total {:?}",
        report.connections,
        report.send_queue_bytes,
        report.receive_queue_bytes,
        report.application_state_bytes,
        report.freeze_and_dump,
        report.ship,
        report.release,
        report.destination_wait,
        report.destination.neighbour_warmup,
        report.destination.claim,
        report.destination.restore,
        report.destination.announce,
        report.close,
        report.total
    )
}

/// Host B: take one migration, then serve its connections and new clients for ever.
fn receive(control: SocketAddr, interface: &str, service: ServiceAddress) -> Result<(), String> {
    let mut takeover = NetlinkTakeover::open(interface).map_err(|e| e.to_string())?;
    let control_listener =
        TcpListener::bind(control).map_err(|e| format!("control port {control}: {e}"))?;
    println!(
        "waiting for a migration of {}/{} on {control}",
        service.address, service.prefix_len
    );
    let (stream, peer) = control_listener
        .accept()
        .map_err(|e| format!("accepting the source: {e}"))?;
    let mut channel = TcpChannel::new(stream, CHANNEL_TIMEOUT).map_err(|e| e.to_string())?;
    let incoming = migrate_in_for(
        &mut channel,
        &mut takeover,
        RestoreOptions::at(monotonic_now()),
        service,
    )
    .map_err(|e| format!("migration from {peer} failed: {e}"))?;
    let report = &incoming.report;
    println!(
        "took {} connection(s) from {peer}: claim {:?}, restore {:?}, announce {:?}{}",
        report.restored,
        report.claim,
        report.restore,
        report.announce,
        report
            .announce_error
            .as_ref()
            .map(|e| format!(" (announce failed: {e})"))
            .unwrap_or_default()
    );
    let mut connections = Vec::with_capacity(incoming.connections.len());
    for c in incoming.connections {
        match CounterConnection::decode(c.connection.into_stream(), &c.application_state) {
            Ok(conn) => connections.push(conn),
            Err(e) => eprintln!("dropping a connection with unreadable state: {e}"),
        }
    }
    // New clients of the service are welcome here from now on, on the listeners bound
    // before the restores (a new bind would fail while the restored sockets hold the port).
    let listeners: Vec<TcpListener> = incoming
        .listeners
        .into_iter()
        .filter(|l| {
            l.set_nonblocking(true)
                .map_err(|e| eprintln!("listener: {e}"))
                .is_ok()
        })
        .collect();
    println!(
        "accepting new clients on {:?}",
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect::<Vec<_>>()
    );
    loop {
        for listener in &listeners {
            accept_all(listener, &mut connections);
        }
        if !serve_step(&mut connections, true) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Accepts every pending client.
fn accept_all(listener: &TcpListener, connections: &mut Vec<CounterConnection>) {
    // Bounded: a burst of clients is taken over several loop turns.
    for _ in 0..256 {
        match listener.accept() {
            Ok((stream, _)) => match CounterConnection::new(stream) {
                Ok(c) => connections.push(c),
                Err(e) => eprintln!("new client: {e}"),
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!("accept: {e}");
                return;
            }
        }
    }
}

/// One turn of the service over every connection; drops finished or failed ones.
fn serve_step(connections: &mut Vec<CounterConnection>, verbose: bool) -> bool {
    let mut progressed = false;
    connections.retain_mut(|c| match c.step() {
        Ok(step) => {
            progressed |= step.progressed;
            !step.finished
        }
        Err(e) => {
            if verbose {
                eprintln!("connection closed on error: {e}");
            }
            false
        }
    });
    progressed
}

/// A `migrate` line on the admin port.
fn admin_request(admin: &TcpListener) -> Option<TcpStream> {
    let (stream, _) = admin.accept().ok()?;
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().ok()?)
        .take(64)
        .read_line(&mut line)
        .ok()?;
    if line.trim() == "migrate" {
        Some(stream)
    } else {
        let mut stream = stream;
        let _ = writeln!(
            stream,
            "unknown command {:?}; the only command is `migrate`",
            line.trim()
        );
        None
    }
}

/// A client that sends numbered lines and checks every answer's counter.
fn client(connect: SocketAddr, lines: u64, interval: Duration) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&connect, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {connect}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 1..=lines {
        let line = format!(
            "line {n} from {}",
            writer.local_addr().map_err(|e| e.to_string())?
        );
        let sent = Instant::now();
        writeln!(writer, "{line}").map_err(|e| format!("sending line {n}: {e}"))?;
        let mut answer = String::new();
        let read = reader
            .read_line(&mut answer)
            .map_err(|e| format!("reading answer {n}: {e}"))?;
        if read == 0 {
            return Err(format!(
                "the server closed the connection before answering line {n}"
            ));
        }
        let expected = format!("{n} {line}");
        if answer.trim_end() != expected {
            return Err(format!(
                "answer {n} is {:?}, expected {expected:?}",
                answer.trim_end()
            ));
        }
        slowest = slowest.max(sent.elapsed());
        if n % 10 == 0 || n == lines {
            println!("{n}/{lines} answers correct (slowest round trip {slowest:?})");
        }
        std::thread::sleep(interval);
    }
    writer
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the server's close: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the last answer",
            rest.len()
        ));
    }
    println!(
        "all {lines} answers correct in {:?}; slowest round trip {slowest:?}",
        started.elapsed()
    );
    Ok(())
}
