use super::*;
use crate::record::ClientRetention;
use crate::seq::SeqNumber;
use crate::time::Instant;

fn id() -> ConnectionId {
    ConnectionId {
        client: "198.18.0.1:40000".parse().expect("addr"),
        server: "198.18.0.10:7000".parse().expect("addr"),
    }
}

fn handshake() -> Handshake {
    Handshake::without_options(SeqNumber(1000), SeqNumber(5000))
}

fn event(kind: EventKind) -> ConnectionEvent {
    ConnectionEvent {
        id: id(),
        at: Instant::from_millis(1),
        kind,
    }
}

fn commands(sessions: &mut ShadowSessions) -> Vec<ShadowCommand> {
    std::iter::from_fn(|| sessions.poll_command()).collect()
}

fn opened() -> ShadowSessions {
    let mut sessions = ShadowSessions::new();
    sessions.on_event(&event(EventKind::Opened(handshake())));
    assert_eq!(commands(&mut sessions), vec![ShadowCommand::Connect(id())]);
    sessions
}

fn client_data(offset: u64, bytes: &[u8]) -> ConnectionEvent {
    event(EventKind::ClientData {
        offset,
        bytes: bytes.to_vec(),
    })
}

fn server_data(offset: u64, bytes: &[u8]) -> ConnectionEvent {
    event(EventKind::ServerData {
        offset,
        bytes: bytes.to_vec(),
    })
}

#[test]
fn equal_bytes_are_dropped_and_the_first_difference_is_reported() {
    let mut c = Comparison::default();
    c.push_primary(0, b"hello world").unwrap();
    c.push_standby(b"hello");
    assert_eq!(c.settle(), Ok(()));
    assert_eq!((c.primary_end(), c.standby_end(), c.backlog()), (11, 5, 6));
    // Overlapping primary bytes are skipped, a gap is refused.
    c.push_primary(6, b"world!").unwrap();
    assert_eq!(c.push_primary(20, b"x"), Err(12));
    c.push_standby(b" wORld!");
    assert_eq!(c.settle(), Err(7));
}

#[test]
fn after_takeover_standby_bytes_beyond_the_primary_are_forwarded() {
    let mut c = Comparison::default();
    c.push_primary(0, b"abc").unwrap();
    c.push_standby(b"ab");
    c.settle().unwrap();
    assert!(c.take_beyond_primary().is_empty());
    c.push_standby(b"cdef");
    c.settle().unwrap();
    assert_eq!(c.take_beyond_primary(), b"def");
    assert_eq!(c.standby_end(), 6);
    c.set_standby_eof();
    assert_eq!(c.settle(), Ok(()));
}

#[test]
fn bytes_after_the_other_sides_end_are_a_divergence() {
    let mut c = Comparison::default();
    c.push_primary(0, b"ab").unwrap();
    c.set_primary_fin(2).unwrap();
    c.push_standby(b"abc");
    assert_eq!(c.settle(), Err(2));
    let mut c = Comparison::default();
    c.push_primary(0, b"abc").unwrap();
    c.push_standby(b"ab");
    c.set_standby_eof();
    assert_eq!(c.settle(), Err(2));
}

#[test]
fn a_comparison_from_a_record_drops_the_standby_bytes_before_it() {
    let mut c = Comparison::starting_at(4);
    c.push_primary(4, b"efgh").unwrap();
    c.push_standby(b"ab");
    c.push_standby(b"cdef");
    assert_eq!(c.settle(), Ok(()));
    assert_eq!((c.primary_end(), c.standby_end()), (8, 6));
    c.push_standby(b"gX");
    assert_eq!(c.settle(), Err(7));
    let mut c = Comparison::starting_at(4);
    c.push_standby(b"ab");
    c.set_standby_eof();
    assert_eq!(
        c.settle(),
        Err(4),
        "the standby ended before the primary's bytes"
    );
}

#[test]
fn client_bytes_skip_overlap_and_refuse_gaps() {
    let mut f = ClientFeed::default();
    f.push(0, b"abc").unwrap();
    f.push(1, b"bcde").unwrap();
    assert_eq!(f.pending.iter().copied().collect::<Vec<_>>(), b"abcde");
    assert_eq!(f.push(9, b"x"), Err(5));
}

#[test]
fn client_bytes_go_to_the_standby_and_are_then_released_in_the_replica() {
    let mut sessions = opened();
    sessions.on_event(&client_data(0, b"GET /"));
    assert_eq!(commands(&mut sessions), vec![]);
    let session = sessions.get_mut(&id()).expect("session");
    assert_eq!(session.client_to_write(), b"GET /");
    session.client_written(3);
    assert_eq!(session.client_to_write(), b" /");
    sessions.settle(&id());
    assert_eq!(
        commands(&mut sessions),
        vec![ShadowCommand::Consume { id: id(), upto: 3 }]
    );
    // Nothing new written: nothing to report.
    sessions.settle(&id());
    assert_eq!(commands(&mut sessions), vec![]);
}

#[test]
fn the_clients_fin_is_due_once_every_byte_before_it_was_written() {
    let mut sessions = opened();
    sessions.on_event(&client_data(0, b"bye"));
    sessions.on_event(&event(EventKind::Fin {
        side: Side::Client,
        offset: 3,
    }));
    let session = sessions.get_mut(&id()).expect("session");
    assert!(!session.client_fin_due());
    session.client_written(3);
    assert!(session.client_fin_due());
    session.client_fin_passed();
    assert!(!session.client_fin_due());
    assert!(session.client().shut());
}

#[test]
fn a_difference_marks_the_connection_diverged_and_releases_its_client_bytes() {
    let mut sessions = opened();
    sessions.on_event(&server_data(0, b"HTTP/1.1 200"));
    let session = sessions.get_mut(&id()).expect("session");
    assert!(session.wants_standby_output());
    session.on_standby_output(b"HTTP/1.1 404");
    assert_eq!(session.status(), &Protection::Diverged { offset: 9 });
    assert!(!session.wants_standby_output());
    sessions.settle(&id());
    assert_eq!(
        commands(&mut sessions),
        vec![
            ShadowCommand::Lost {
                id: id(),
                status: Protection::Diverged { offset: 9 }
            },
            ShadowCommand::Consume {
                id: id(),
                upto: u64::MAX
            },
        ]
    );
    // Client bytes of a lost connection are released as they come, once per batch.
    sessions.on_event(&client_data(0, b"more"));
    assert_eq!(
        commands(&mut sessions),
        vec![ShadowCommand::Consume {
            id: id(),
            upto: u64::MAX
        }]
    );
    let session = sessions.get(&id()).expect("session");
    assert_eq!(
        session.client_to_write(),
        b"",
        "nothing goes to a lost standby"
    );
}

#[test]
fn a_gap_in_the_replicated_client_bytes_unprotects() {
    let mut sessions = opened();
    sessions.on_event(&client_data(0, b"ab"));
    sessions.on_event(&client_data(5, b"fg"));
    let lost = commands(&mut sessions);
    assert_eq!(
        lost[0],
        ShadowCommand::Lost {
            id: id(),
            status: Protection::Unprotected(
                "the shadow missed client bytes from offset 2 to 5".into()
            )
        }
    );
}

#[test]
fn a_primary_fin_before_missing_server_bytes_unprotects() {
    let mut sessions = opened();
    sessions.on_event(&server_data(0, b"ab"));
    sessions.on_event(&event(EventKind::Fin {
        side: Side::Server,
        offset: 4,
    }));
    assert!(!sessions.get(&id()).expect("session").is_protected());
}

#[test]
fn a_backlog_past_the_limit_unprotects() {
    let mut sessions = opened();
    let big = vec![7u8; COMPARISON_LIMIT + 1];
    sessions.on_event(&server_data(0, &big));
    assert_eq!(
        sessions.get(&id()).expect("session").status(),
        &Protection::Unprotected(
            "comparison backlog exceeded (the standby lags or runs ahead too far)".into()
        )
    );
}

#[test]
fn a_connection_picked_up_mid_stream_gets_no_standby_session() {
    let mut sessions = ShadowSessions::new();
    sessions.on_event(&event(EventKind::Opened(Handshake::mid_stream(
        SeqNumber(1),
        SeqNumber(2),
    ))));
    let out = commands(&mut sessions);
    assert!(
        !out.contains(&ShadowCommand::Connect(id())),
        "no standby session: {out:?}"
    );
    assert!(matches!(
        out[0],
        ShadowCommand::Lost {
            status: Protection::Unprotected(_),
            ..
        }
    ));
}

#[test]
fn a_reset_connection_closes_its_standby_session_with_a_reset() {
    let mut sessions = opened();
    sessions.on_event(&event(EventKind::Closed(CloseHow::Reset(Side::Client))));
    assert_eq!(
        commands(&mut sessions),
        vec![ShadowCommand::Close {
            id: id(),
            reset: true
        }]
    );
    assert!(sessions.is_empty());
    // The same handshake opened again is a new session; a repeated Opened is not.
    sessions.on_event(&event(EventKind::Opened(handshake())));
    sessions.on_event(&event(EventKind::Opened(handshake())));
    assert_eq!(commands(&mut sessions), vec![ShadowCommand::Connect(id())]);
}

fn record_with(client: &[u8], server: &[u8], retention: ClientRetention) -> ConnectionRecord {
    let mut record = ConnectionRecord::open(id(), Instant::ZERO, handshake(), retention);
    for e in [client_data(0, client), server_data(0, server)] {
        record.apply(&e).expect("apply");
    }
    record
}

#[test]
fn a_resynchronised_record_with_every_client_byte_is_followed() {
    let record = record_with(
        b"request",
        b"reply",
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    let mut sessions = ShadowSessions::new();
    sessions.on_record(&record);
    assert_eq!(commands(&mut sessions), vec![ShadowCommand::Connect(id())]);
    let session = sessions.get_mut(&id()).expect("session");
    assert_eq!(session.client_to_write(), b"request");
    assert_eq!(session.comparison().primary_end(), 5);
    session.on_standby_output(b"reply");
    assert!(session.is_protected());
    // The same record again adds nothing twice.
    sessions.on_record(&record);
    let session = sessions.get(&id()).expect("session");
    assert_eq!(session.client().end(), 7);
}

#[test]
fn a_resynchronised_record_missing_client_bytes_is_unprotected() {
    let mut record = record_with(
        b"request",
        b"",
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    record.consume_client(3);
    let mut sessions = ShadowSessions::new();
    sessions.on_record(&record);
    let out = commands(&mut sessions);
    assert!(!out.contains(&ShadowCommand::Connect(id())), "{out:?}");
    assert!(!sessions.get(&id()).expect("session").is_protected());
}
