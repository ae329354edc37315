//! Real-kernel tests of address takeover: an address claimed over rtnetlink on a host's
//! `eth0` appears in `ip addr`, its announcement (RFC 5227 ARP announcement / RFC 4861
//! unsolicited neighbour advertisement) rewrites a neighbour's entry in another namespace,
//! and a release removes it. IPv4 and IPv6.

use cttm_restore::AddressTakeover;
use cttm_restore::takeover::probe::mac_text;
use cttm_restore::takeover::{
    AnnounceConfig, ClaimError, ClaimOutcome, NetlinkTakeover, OpenError, ReleaseOutcome,
};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A MAC no host of the lab has: the client's stale entry for the service address points
/// here until the announcement arrives.
const STALE_MAC: &str = "02:00:00:00:00:99";

/// Waits (bounded in time and count) until `ip -n <ns> neigh show <address>` mentions `mac`.
fn wait_for_neighbour(ns: &Netns, address: &str, mac: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = String::new();
    for _ in 0..300 {
        last = ns
            .ip(&["neigh", "show", address, "dev", "eth0"])
            .expect("ip neigh");
        if last.contains(mac) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    last
}

fn claim_announce_release(family: &str, address: &str, prefix_len: u8) {
    let mut lab = Lab::new("tko").expect("lab");
    let client = lab
        .add_host("client", &["198.18.0.1/24", "2001:db8::1/64"])
        .expect("client");
    let server = lab
        .add_host("b", &["198.18.0.2/24", "2001:db8::2/64"])
        .expect("host b");
    let ip: IpAddr = address.parse().expect("address");
    let cidr = format!("{address}/{prefix_len}");

    let mut takeover = server
        .run(|| NetlinkTakeover::open("eth0"))
        .expect("in b")
        .expect("open takeover on eth0")
        .with_announce_config(AnnounceConfig {
            count: 2,
            interval: Duration::from_millis(20),
        });
    let mac = mac_text(takeover.mac());
    let shown = server.ip(&["link", "show", "eth0"]).expect("ip link");
    assert!(
        shown.contains(&mac),
        "takeover MAC {mac} is eth0's: {shown}"
    );

    // The client believes the address lives at a MAC nobody has.
    client
        .ip(&[
            family, "neigh", "replace", address, "lladdr", STALE_MAC, "dev", "eth0", "nud", "stale",
        ])
        .expect("seed stale neighbour");
    assert!(
        client
            .ip(&["neigh", "show", address, "dev", "eth0"])
            .expect("neigh")
            .contains(STALE_MAC)
    );

    assert_eq!(
        takeover.claim_address(ip, prefix_len).expect("claim"),
        ClaimOutcome::Added
    );
    let addrs = server
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    assert!(addrs.contains(&cidr), "{cidr} on eth0 after claim: {addrs}");
    if ip.is_ipv6() {
        let line = addrs
            .lines()
            .find(|l| l.contains(&cidr))
            .expect("address line");
        assert!(
            line.contains("nodad") && !line.contains("tentative"),
            "IPv6 address usable at once: {line}"
        );
    }
    // Claiming again is an idempotent success.
    assert_eq!(
        takeover.claim_address(ip, prefix_len).expect("claim again"),
        ClaimOutcome::AlreadyPresent
    );
    AddressTakeover::claim(&mut takeover, ip, prefix_len).expect("trait claim is idempotent");

    assert_eq!(takeover.announce_address(ip).expect("announce"), 2);
    let neigh = wait_for_neighbour(&client, address, &mac);
    assert!(
        neigh.contains(&mac),
        "client's entry for {address} moved to {mac}: {neigh}"
    );

    // The address now answers: a TCP connection from the client reaches b.
    let bind = if ip.is_ipv6() {
        format!("[{address}]:7100")
    } else {
        format!("{address}:7100")
    };
    let listener = server
        .run(|| std::net::TcpListener::bind(&bind))
        .expect("in b")
        .expect("bind the claimed address");
    let connected = client
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &bind.parse().expect("addr"),
                Duration::from_secs(3),
            )
        })
        .expect("in client");
    let stream = connected.expect("connect to the claimed address");
    let (_, from) = listener.accept().expect("accept");
    assert_eq!(from, stream.local_addr().expect("local"));

    assert_eq!(
        takeover.release_address(ip, prefix_len).expect("release"),
        ReleaseOutcome::Removed
    );
    let addrs = server
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    assert!(!addrs.contains(&cidr), "{cidr} gone after release: {addrs}");
    assert_eq!(
        takeover
            .release_address(ip, prefix_len)
            .expect("release again"),
        ReleaseOutcome::WasAbsent
    );
    AddressTakeover::release(&mut takeover, ip, prefix_len).expect("trait release is idempotent");
}

#[test]
fn ipv4_address_is_claimed_announced_by_arp_and_released() {
    if !kernel_tests_enabled("ipv4_address_is_claimed_announced_by_arp_and_released") {
        return;
    }
    claim_announce_release("-4", "198.18.0.10", 24);
}

#[test]
fn ipv6_address_is_claimed_announced_by_neighbour_advertisement_and_released() {
    if !kernel_tests_enabled(
        "ipv6_address_is_claimed_announced_by_neighbour_advertisement_and_released",
    ) {
        return;
    }
    claim_announce_release("-6", "2001:db8::10", 64);
}

#[test]
fn missing_interface_and_bad_prefix_are_clear_errors() {
    if !kernel_tests_enabled("missing_interface_and_bad_prefix_are_clear_errors") {
        return;
    }
    let mut lab = Lab::new("tke").expect("lab");
    let host = lab.add_host("b", &["198.18.0.2/24"]).expect("host b");
    let missing = host.run(|| NetlinkTakeover::open("nosuch0")).expect("in b");
    match missing {
        Err(OpenError::InterfaceNotFound { interface }) => assert_eq!(interface, "nosuch0"),
        other => panic!("expected InterfaceNotFound, got {other:?}"),
    }
    let mut takeover = host
        .run(|| NetlinkTakeover::open("eth0"))
        .expect("in b")
        .expect("open");
    match takeover.claim_address("198.18.0.10".parse().expect("ip"), 33) {
        Err(ClaimError::PrefixTooLong { max: 32, .. }) => {}
        other => panic!("expected PrefixTooLong, got {other:?}"),
    }
    // The interface disappears under an open takeover: a clear error, not a panic.
    host.ip(&["link", "del", "eth0"]).expect("delete eth0");
    match takeover.claim_address("198.18.0.10".parse().expect("ip"), 24) {
        Err(ClaimError::InterfaceGone { interface }) => assert_eq!(interface, "eth0"),
        other => panic!("expected InterfaceGone, got {other:?}"),
    }
}
