//! One test per rule of the ownership check: crafted results at explicit times, exact
//! commands.

use super::*;

const HOLDER: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0x20, 0x30];
const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn addresses() -> Vec<IpAddr> {
    vec![
        "198.18.0.10".parse().expect("IPv4 address"),
        "2001:db8::10".parse().expect("IPv6 address"),
    ]
}

fn answered(mac: [u8; 6]) -> ProbeResult {
    ProbeResult::Answered {
        address: addresses()[0],
        mac,
    }
}

fn holder(mac: [u8; 6]) -> OtherHolder {
    OtherHolder {
        address: addresses()[0],
        mac,
    }
}

fn check() -> OwnershipCheck {
    OwnershipCheck::new(OwnershipConfig::new(addresses()))
}

/// A check whose start probe at 0 ms was silent: serving from 10 ms.
fn serving() -> OwnershipCheck {
    let mut c = check();
    assert_eq!(c.poll(at(0)), Some(OwnershipCommand::Probe(addresses())));
    assert_eq!(c.on_probe(at(10), ProbeResult::Silent), None);
    assert_eq!(c.poll(at(10)), Some(OwnershipCommand::Serve));
    assert!(c.is_serving());
    c
}

/// A check whose start probe was answered: released and non-serving from 10 ms.
fn non_serving() -> OwnershipCheck {
    let mut c = check();
    assert!(matches!(c.poll(at(0)), Some(OwnershipCommand::Probe(_))));
    assert_eq!(
        c.on_probe(at(10), answered(HOLDER)),
        Some(OwnershipEvent::ServedElsewhere(holder(HOLDER)))
    );
    assert_eq!(c.poll(at(10)), Some(OwnershipCommand::Release(addresses())));
    assert!(c.awaits_rejoin());
    c
}

/// A serving check whose backup fell silent at 5 s: the watch's probe is out.
fn watching() -> OwnershipCheck {
    let mut c = serving();
    c.observe_backup(false, at(5_000));
    assert_eq!(
        c.poll(at(5_000)),
        Some(OwnershipCommand::Probe(addresses()))
    );
    c
}

/// A non-serving check asked to rejoin at 1 s: the rejoin's probe is out.
fn rejoining() -> OwnershipCheck {
    let mut c = non_serving();
    assert!(c.on_rejoin_request(at(1_000)));
    assert_eq!(
        c.poll(at(1_000)),
        Some(OwnershipCommand::Probe(addresses()))
    );
    c
}

#[test]
fn the_start_check_probes_at_once_and_serves_on_silence() {
    let mut c = check();
    assert_eq!(c.next_deadline(), Some(Instant::ZERO), "due from the start");
    assert_eq!(c.poll(at(0)), Some(OwnershipCommand::Probe(addresses())));
    assert_eq!(c.poll(at(5)), None, "the probe is out");
    assert_eq!(c.next_deadline(), None);
    assert_eq!(c.on_probe(at(10), ProbeResult::Silent), None);
    assert_eq!(c.next_deadline(), Some(at(10)));
    assert_eq!(c.poll(at(10)), Some(OwnershipCommand::Serve));
    assert!(c.is_serving());
    assert_eq!(c.poll(at(20)), None);
    assert!(c.alerts().is_empty());
}

#[test]
fn without_probing_the_agent_serves_at_once_and_never_watches() {
    let mut c = OwnershipCheck::new(OwnershipConfig {
        probe: false,
        ..OwnershipConfig::new(addresses())
    });
    assert_eq!(c.poll(at(0)), Some(OwnershipCommand::Serve));
    c.observe_backup(false, at(100));
    assert_eq!(c.next_deadline(), None);
    assert_eq!(c.poll(at(5_000)), None);
}

#[test]
fn a_start_probe_that_fails_counts_as_silence() {
    let mut c = check();
    assert!(matches!(c.poll(at(0)), Some(OwnershipCommand::Probe(_))));
    assert_eq!(
        c.on_probe(at(10), ProbeResult::Failed("interface down".into())),
        Some(OwnershipEvent::ProbeFailed("interface down".into()))
    );
    assert_eq!(c.poll(at(10)), Some(OwnershipCommand::Serve));
}

#[test]
fn an_answer_at_start_releases_the_addresses_and_waits_for_a_rejoin() {
    let mut c = non_serving();
    assert!(!c.is_serving());
    assert_eq!(c.holder(), Some(holder(HOLDER)));
    assert_eq!(c.next_deadline(), None, "nothing until a rejoin request");
    assert_eq!(c.poll(at(60_000)), None);
    assert_eq!(
        c.alerts(),
        vec![
            "the service address 198.18.0.10 is served by 02:00:5e:10:20:30: not serving until `cttmd rejoin`"
                .to_string()
        ]
    );
}

#[test]
fn a_rejoin_still_answered_is_refused_and_the_agent_stays_non_serving() {
    let mut c = non_serving();
    assert!(c.on_rejoin_request(at(1_000)));
    assert!(!c.awaits_rejoin(), "a rejoin is under way");
    assert!(!c.on_rejoin_request(at(1_001)), "one rejoin at a time");
    assert_eq!(
        c.poll(at(1_000)),
        Some(OwnershipCommand::Probe(addresses()))
    );
    assert_eq!(
        c.on_probe(at(1_200), answered(OTHER)),
        Some(OwnershipEvent::RejoinRefused(holder(OTHER)))
    );
    assert!(c.awaits_rejoin());
    assert_eq!(c.poll(at(1_200)), None, "no claim, no serve");
    let alerts = c.alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert!(
        alerts[0].contains("02:00:5e:10:20:30"),
        "the first holder: {alerts:?}"
    );
    assert_eq!(
        alerts[1],
        "rejoin refused: the service address 198.18.0.10 is served by 02:00:00:00:00:03; stop the agent there first"
    );
}

#[test]
fn a_silent_rejoin_claims_the_addresses_then_serves() {
    let mut c = rejoining();
    assert_eq!(c.on_probe(at(1_200), ProbeResult::Silent), None);
    assert_eq!(
        c.poll(at(1_200)),
        Some(OwnershipCommand::Claim(addresses()))
    );
    assert_eq!(c.poll(at(1_250)), None, "the claim is out");
    assert_eq!(
        c.on_claim(at(1_300), Ok(())),
        Some(OwnershipEvent::Rejoined)
    );
    assert_eq!(c.poll(at(1_300)), Some(OwnershipCommand::Serve));
    assert!(c.is_serving());
    assert_eq!(c.holder(), None);
    assert!(c.alerts().is_empty());
}

#[test]
fn a_rejoin_whose_probe_fails_claims_as_after_silence() {
    let mut c = rejoining();
    assert_eq!(
        c.on_probe(at(1_200), ProbeResult::Failed("no carrier".into())),
        Some(OwnershipEvent::ProbeFailed("no carrier".into()))
    );
    assert_eq!(
        c.poll(at(1_200)),
        Some(OwnershipCommand::Claim(addresses()))
    );
}

#[test]
fn a_failed_claim_leaves_the_agent_non_serving_until_the_next_request() {
    let mut c = rejoining();
    c.on_probe(at(1_100), ProbeResult::Silent);
    assert!(matches!(
        c.poll(at(1_100)),
        Some(OwnershipCommand::Claim(_))
    ));
    assert_eq!(
        c.on_claim(at(1_200), Err("operation not permitted".into())),
        Some(OwnershipEvent::ClaimFailed(
            "operation not permitted".into()
        ))
    );
    assert!(c.awaits_rejoin());
    assert_eq!(c.poll(at(1_200)), None);
    assert_eq!(
        c.alerts()[1],
        "rejoin failed: claiming the service address: operation not permitted"
    );
    // The next request starts over from the probe.
    assert!(c.on_rejoin_request(at(2_000)));
    assert!(matches!(
        c.poll(at(2_000)),
        Some(OwnershipCommand::Probe(_))
    ));
}

#[test]
fn a_rejoin_request_is_taken_only_while_non_serving() {
    let mut c = check();
    assert!(!c.on_rejoin_request(at(0)), "starting");
    let mut c2 = serving();
    assert!(!c2.on_rejoin_request(at(100)), "serving");
    assert_eq!(c2.poll(at(100)), None);
    assert!(matches!(c.poll(at(0)), Some(OwnershipCommand::Probe(_))));
}

#[test]
fn the_watch_probes_only_while_the_backup_is_silent_once_per_interval() {
    let mut c = serving();
    c.observe_backup(true, at(500));
    assert_eq!(c.next_deadline(), None, "the backup is alive");
    assert_eq!(c.poll(at(5_000)), None);
    c.observe_backup(false, at(5_000));
    assert_eq!(c.next_deadline(), Some(at(5_000)));
    assert_eq!(
        c.poll(at(5_000)),
        Some(OwnershipCommand::Probe(addresses()))
    );
    assert_eq!(c.poll(at(5_010)), None, "the probe is out");
    assert_eq!(c.on_probe(at(5_300), ProbeResult::Silent), None);
    assert!(c.is_serving());
    assert_eq!(
        c.next_deadline(),
        Some(at(6_000)),
        "a second after the last probe"
    );
    assert_eq!(c.poll(at(5_999)), None);
    assert!(matches!(
        c.poll(at(6_000)),
        Some(OwnershipCommand::Probe(_))
    ));
}

#[test]
fn a_watch_answer_demotes_then_releases_the_addresses() {
    let mut c = watching();
    assert_eq!(
        c.on_probe(at(5_300), answered(HOLDER)),
        Some(OwnershipEvent::ServedElsewhere(holder(HOLDER)))
    );
    assert!(!c.is_serving());
    assert_eq!(c.next_deadline(), Some(at(5_300)));
    assert_eq!(
        c.poll(at(5_300)),
        Some(OwnershipCommand::Demote(holder(HOLDER)))
    );
    assert_eq!(
        c.poll(at(5_400)),
        Some(OwnershipCommand::Release(addresses()))
    );
    assert!(c.awaits_rejoin());
    assert!(c.alerts()[0].contains("not serving until `cttmd rejoin`"));
}

#[test]
fn a_backup_heard_again_stops_the_watch_and_a_new_silence_keeps_the_interval() {
    let mut c = watching();
    c.on_probe(at(5_100), ProbeResult::Silent);
    c.observe_backup(true, at(5_500));
    assert_eq!(c.poll(at(6_000)), None, "alive: no probe");
    assert_eq!(c.next_deadline(), None);
    // Silent again soon after: the next probe still waits a second after the last one.
    c.observe_backup(false, at(5_600));
    assert_eq!(c.next_deadline(), Some(at(6_000)));
    // Observing the same silence again does not move it.
    c.observe_backup(false, at(5_800));
    assert_eq!(c.next_deadline(), Some(at(6_000)));
    // Silent long after: due at once.
    c.observe_backup(true, at(5_900));
    c.observe_backup(false, at(9_000));
    assert_eq!(c.next_deadline(), Some(at(9_000)));
    assert!(matches!(
        c.poll(at(9_000)),
        Some(OwnershipCommand::Probe(_))
    ));
}

#[test]
fn an_answer_demotes_even_if_the_backup_was_heard_while_the_probe_was_out() {
    let mut c = watching();
    c.observe_backup(true, at(5_100));
    assert_eq!(
        c.on_probe(at(5_300), answered(HOLDER)),
        Some(OwnershipEvent::ServedElsewhere(holder(HOLDER)))
    );
    assert_eq!(
        c.poll(at(5_300)),
        Some(OwnershipCommand::Demote(holder(HOLDER)))
    );
}

#[test]
fn a_watch_probe_that_fails_is_reported_and_the_watch_goes_on() {
    let mut c = watching();
    assert_eq!(
        c.on_probe(
            at(5_100),
            ProbeResult::Failed("send: no buffer space".into())
        ),
        Some(OwnershipEvent::ProbeFailed("send: no buffer space".into()))
    );
    assert!(c.is_serving());
    assert!(matches!(
        c.poll(at(6_000)),
        Some(OwnershipCommand::Probe(_))
    ));
}

#[test]
fn a_rejoined_agent_watches_afresh() {
    let mut c = watching();
    c.on_probe(at(5_100), answered(HOLDER));
    assert!(matches!(
        c.poll(at(5_100)),
        Some(OwnershipCommand::Demote(_))
    ));
    assert!(matches!(
        c.poll(at(5_100)),
        Some(OwnershipCommand::Release(_))
    ));
    // Silence observed while non-serving is not the watch's.
    c.observe_backup(false, at(5_200));
    assert!(c.on_rejoin_request(at(8_000)));
    assert!(matches!(
        c.poll(at(8_000)),
        Some(OwnershipCommand::Probe(_))
    ));
    c.on_probe(at(8_100), ProbeResult::Silent);
    assert!(matches!(
        c.poll(at(8_100)),
        Some(OwnershipCommand::Claim(_))
    ));
    c.on_claim(at(8_200), Ok(()));
    assert_eq!(c.poll(at(8_200)), Some(OwnershipCommand::Serve));
    assert_eq!(
        c.next_deadline(),
        None,
        "the backup is not known silent yet"
    );
    c.observe_backup(false, at(8_300));
    assert!(matches!(
        c.poll(at(8_300)),
        Some(OwnershipCommand::Probe(_))
    ));
}

#[test]
fn results_nobody_asked_for_are_ignored() {
    let mut c = serving();
    assert_eq!(c.on_probe(at(100), answered(HOLDER)), None);
    assert_eq!(c.on_claim(at(100), Ok(())), None);
    assert!(c.is_serving());
    let mut c = non_serving();
    assert_eq!(c.on_probe(at(100), ProbeResult::Silent), None);
    assert_eq!(c.on_claim(at(100), Err("late".into())), None);
    assert!(c.awaits_rejoin());
    assert_eq!(c.alerts().len(), 1);
}
