//! Real-kernel tests of address probing (`AddressProbe`): a Linux host holding an address
//! answers the RFC 5227 ARP probe (IPv4) and the RFC 4862 duplicate address detection
//! neighbour solicitation (IPv6) of another host, and the answer names its MAC; an address
//! nobody holds stays silent; a missing interface is reported as such.

use cttm_restore::takeover::probe::{AddressProbe, ProbeConfig, ProbeError, ProbeOutcome};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use std::net::IpAddr;
use std::time::Duration;

/// Three probes of 200 ms: generous on a loaded machine (an answer comes in microseconds).
const CONFIG: ProbeConfig = ProbeConfig {
    count: 3,
    wait: Duration::from_millis(200),
};

/// The MAC of `interface` in `host`, from `ip -o link`.
fn mac_of(host: &Netns, interface: &str) -> [u8; 6] {
    let out = host
        .ip(&["-o", "link", "show", "dev", interface])
        .expect("ip link");
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    <[u8; 6]>::try_from(bytes.as_slice()).expect("6 bytes")
}

/// Probes `address` from `host`'s `eth0`.
fn probe_from(host: &Netns, address: &str) -> ProbeOutcome {
    let address: IpAddr = address.parse().expect("address");
    host.run(move || {
        let mut probe = AddressProbe::open("eth0").expect("open the probe on eth0");
        probe.probe(address, CONFIG).expect("probe")
    })
    .expect("in the host")
}

#[test]
fn a_held_address_answers_and_an_absent_one_is_silent() {
    if !kernel_tests_enabled("a_held_address_answers_and_an_absent_one_is_silent") {
        return;
    }
    let mut lab = Lab::new("sbp").expect("lab");
    let holder = lab
        .add_host(
            "h",
            &[
                "198.18.0.2/24",
                "2001:db8::2/64",
                "198.18.0.10/24",
                "2001:db8::10/64",
            ],
        )
        .expect("holder");
    let prober = lab
        .add_host("p", &["198.18.0.3/24", "2001:db8::3/64"])
        .expect("prober");
    let holder_mac = mac_of(&holder, "eth0");
    let prober_mac = mac_of(&prober, "eth0");
    assert_ne!(holder_mac, prober_mac);

    let opened_mac = prober
        .run(|| AddressProbe::open("eth0").map(|p| p.mac()))
        .expect("in the prober")
        .expect("open");
    assert_eq!(opened_mac, prober_mac, "the probe uses the interface's MAC");

    for address in ["198.18.0.10", "2001:db8::10"] {
        assert_eq!(
            probe_from(&prober, address),
            ProbeOutcome::Answered { mac: holder_mac },
            "{address} is held by the other host"
        );
    }
    // Nobody holds these: no answer (the prober's own frames do not count).
    for address in ["198.18.0.77", "2001:db8::77"] {
        assert_eq!(
            probe_from(&prober, address),
            ProbeOutcome::Silent,
            "{address} is held by nobody"
        );
    }
    // The prober's own addresses are not "another host" either: the kernel does not answer
    // frames its own host sent, and its own MAC never counts.
    for address in ["198.18.0.3", "2001:db8::3"] {
        assert_eq!(
            probe_from(&prober, address),
            ProbeOutcome::Silent,
            "{address}"
        );
    }

    // Once the holder gives the address up, it is silent.
    holder
        .ip(&["addr", "del", "198.18.0.10/24", "dev", "eth0"])
        .expect("del v4");
    holder
        .ip(&["-6", "addr", "del", "2001:db8::10/64", "dev", "eth0"])
        .expect("del v6");
    for address in ["198.18.0.10", "2001:db8::10"] {
        assert_eq!(
            probe_from(&prober, address),
            ProbeOutcome::Silent,
            "{address} was released"
        );
    }

    // A holder cut off the network cannot answer.
    holder
        .ip(&["addr", "add", "198.18.0.10/24", "dev", "eth0"])
        .expect("add v4");
    assert_eq!(
        probe_from(&prober, "198.18.0.10"),
        ProbeOutcome::Answered { mac: holder_mac }
    );
    lab.cut(&holder).expect("cut");
    assert_eq!(probe_from(&prober, "198.18.0.10"), ProbeOutcome::Silent);
}

#[test]
fn a_missing_interface_is_no_interface() {
    if !kernel_tests_enabled("a_missing_interface_is_no_interface") {
        return;
    }
    let mut lab = Lab::new("sbn").expect("lab");
    let host = lab.add_host("h", &["198.18.0.2/24"]).expect("host");
    let result = host
        .run(|| AddressProbe::open("eth9").map(|_| ()))
        .expect("in the host");
    match result {
        Err(ProbeError::NoInterface { interface }) => assert_eq!(interface, "eth9"),
        other => panic!("expected NoInterface, got {other:?}"),
    }
}
