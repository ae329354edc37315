//! Unit tests of the backend-independent rules.

use super::*;
use crate::snapshot::{
    NegotiatedOptions, ReceiveQueue, RepairWindow, SendQueue, TimestampClock, WindowScale,
};
use crate::{ConnectionId, SeqNumber, Side};

fn snapshot() -> ConnectionSnapshot {
    ConnectionSnapshot {
        id: ConnectionId {
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.0.2:80".parse().unwrap(),
        },
        state: TcpState::Established,
        restorability: Restorability::Restorable,
        client_isn: SeqNumber(1000),
        server_isn: SeqNumber(5000),
        options: NegotiatedOptions {
            mss: 1460,
            window_scale: Some(WindowScale {
                send: 7,
                receive: 7,
            }),
            sack: true,
            timestamps: true,
        },
        send: SendQueue {
            una: SeqNumber(5001),
            bytes: b"hello".to_vec(),
            unsent: 0,
            fin: false,
        },
        receive: ReceiveQueue {
            next: SeqNumber(1004),
            bytes: b"abc".to_vec(),
            fin: false,
        },
        window: RepairWindow {
            snd_wl1: 1001,
            snd_wnd: 65535,
            max_window: 65535,
            rcv_wnd: 65535,
            rcv_wup: 1004,
        },
        clock: Some(TimestampClock {
            server_tsval: 4_000_000_000,
            observed_at: Instant::from_millis(10_000),
            client_tsval: 7,
        }),
        updated_at: Instant::from_millis(10_000),
    }
}

#[test]
fn a_complete_snapshot_is_restorable() {
    assert!(check_restorable(&snapshot()).is_ok());
}

#[test]
fn mid_stream_and_unsafe_snapshots_are_refused_with_the_reason() {
    let mut s = snapshot();
    s.restorability = Restorability::Unsafe(UnsafeReason::MidStream);
    let e = check_restorable(&s).unwrap_err();
    assert!(matches!(e, RestoreError::NotRestorable { .. }));
    assert!(e.to_string().contains("mid-stream"), "{e}");
    s.restorability = Restorability::Unsafe(UnsafeReason::CaptureHole {
        side: Side::Client,
        offset: 5,
    });
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::NotRestorable { .. })
    ));
    s.restorability = Restorability::HandshakeIncomplete;
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::NotRestorable { .. })
    ));
}

#[test]
fn states_without_a_socket_and_inconsistent_snapshots_are_refused() {
    for state in [TcpState::TimeWait, TcpState::Closed, TcpState::SynReceived] {
        let mut s = snapshot();
        s.state = state;
        assert!(
            matches!(
                check_restorable(&s),
                Err(RestoreError::NotRestorable { .. })
            ),
            "{state:?}"
        );
    }
    let mut s = snapshot();
    s.state = TcpState::CloseWait; // but receive.fin is false
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
    let mut s = snapshot();
    s.options.window_scale = Some(WindowScale {
        send: 15,
        receive: 2,
    });
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
    let mut s = snapshot();
    s.send.unsent = 6;
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
    let mut s = snapshot();
    s.state = TcpState::FinWait2; // the client acknowledged the FIN, yet bytes are queued
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
    let mut s = snapshot();
    s.state = TcpState::FinWait1; // but send.fin is false
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
    s.send.fin = true;
    s.send.unsent = 2; // a FIN queued behind unsent bytes is restorable
    assert!(check_restorable(&s).is_ok());
    let mut s = snapshot();
    s.clock = None;
    assert!(matches!(
        check_restorable(&s),
        Err(RestoreError::InvalidSnapshot { .. })
    ));
}

#[test]
fn the_clock_continues_by_the_elapsed_milliseconds_and_wraps() {
    let s = snapshot();
    let options = RestoreOptions::at(Instant::from_millis(10_000 + 300_000_000));
    let tsval = plan_server_tsval(&s, &options).unwrap().unwrap();
    assert_eq!(tsval, 4_000_000_000u32.wrapping_add(300_000_000));
    let mut no_ts = snapshot();
    no_ts.options.timestamps = false;
    assert_eq!(plan_server_tsval(&no_ts, &options).unwrap(), None);
}

#[test]
fn a_clock_that_would_run_backwards_is_refused_or_corrected() {
    let s = snapshot();
    let early = RestoreOptions::at(Instant::from_millis(9_000));
    assert!(matches!(
        plan_server_tsval(&s, &early),
        Err(RestoreError::ClockRunsBackwards { .. })
    ));
    let corrected = early.with_clock(ClockPolicy::Correct {
        margin: Duration::from_millis(250),
    });
    assert_eq!(
        plan_server_tsval(&s, &corrected).unwrap(),
        Some(4_000_000_250)
    );
}
