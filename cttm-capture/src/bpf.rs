//! Classic BPF socket filters generated from a [`ServiceSet`].
//!
//! The program runs in the kernel on every frame of the capture interface (AF_PACKET
//! `SOCK_RAW`, so it sees the Ethernet header) and passes only TCP segments to or from one of
//! the service endpoints, both directions, IPv4 and IPv6. Everything else (ARP, neighbour
//! discovery, other ports, other protocols) is dropped before it reaches the capture ring,
//! which keeps the ring for the traffic that matters (the kernel counts ring overflows as
//! drops, and any drop can make a connection unsafe).
//!
//! What the filter handles and what it does not:
//! - Untagged Ethernet II frames only (EtherType at offset 12). VLAN-tagged frames are
//!   dropped; capture on the VLAN interface instead (the kernel strips the tag there).
//! - IPv4 with options (the header length is read from the IHL field). Non-first IPv4
//!   fragments carry no TCP header and are dropped; the tracker cannot use fragments anyway.
//! - IPv6 with TCP directly after the fixed header. A frame whose first next-header is an
//!   extension header (hop-by-hop, routing, fragment, destination options, AH) cannot be
//!   matched by a classic BPF program of bounded size; with
//!   [`FilterOptions::pass_ipv6_extension_headers`] (the default) such frames are passed to
//!   user space, where the tracker's own [`ServiceSet::classify`] filters them; without it
//!   they are dropped.
//! - An unspecified service address (`0.0.0.0`, `::`) matches every address of its family.
//!
//! The program is pure data ([`BpfInstruction`]s, the layout of the kernel's
//! `struct sock_filter`); attaching it is the backend's job.

use cttm_core::{ServiceEndpoint, ServiceSet};
use std::net::IpAddr;
use thiserror::Error;

// Opcode fields, from the kernel's include/uapi/linux/bpf_common.h and filter.h.
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
/// The most instructions the kernel accepts in one classic program (`BPF_MAXINSNS`,
/// include/uapi/linux/bpf_common.h).
pub const BPF_MAXINSNS: usize = 4096;

const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
/// IPv6 extension headers that may stand between the fixed header and TCP (RFC 8200 §4):
/// hop-by-hop, routing, fragment, destination options, authentication header.
const IPV6_EXTENSION_HEADERS: [u32; 5] = [0, 43, 44, 60, 51];

// Offsets in an untagged Ethernet frame.
const ETH_HEADER_LEN: u32 = 14;
const ETH_TYPE: u32 = 12;
const IPV4_FLAGS_FRAGMENT: u32 = ETH_HEADER_LEN + 6;
const IPV4_PROTOCOL: u32 = ETH_HEADER_LEN + 9;
const IPV4_SRC: u32 = ETH_HEADER_LEN + 12;
const IPV4_DST: u32 = ETH_HEADER_LEN + 16;
const IPV6_NEXT_HEADER: u32 = ETH_HEADER_LEN + 6;
const IPV6_SRC: u32 = ETH_HEADER_LEN + 8;
const IPV6_DST: u32 = ETH_HEADER_LEN + 24;
const IPV6_HEADER_LEN: u32 = 40;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`
/// (include/uapi/linux/filter.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInstruction {
    /// Operation code.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

/// How the filter is generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOptions {
    /// Pass IPv6 frames whose first next-header is an extension header to user space (the
    /// filter cannot see the TCP ports behind it). Default true: correctness over a few extra
    /// frames; the tracker ignores the ones of other services.
    pub pass_ipv6_extension_headers: bool,
    /// Bytes of each accepted frame to keep (the filter's return value). Default 262,144,
    /// more than any GSO/GRO super-segment, so frames are never cut by the filter.
    pub snap_len: u32,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            pass_ipv6_extension_headers: true,
            snap_len: 262_144,
        }
    }
}

/// Why no filter could be generated.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BpfError {
    /// The service set is empty: the filter would drop everything.
    #[error("no service endpoint configured: add at least one service address and port")]
    NoServices,
    /// Too many endpoints for one classic BPF program.
    #[error(
        "{endpoints} service endpoints need {instructions} BPF instructions, more than the kernel's \
         limit of {BPF_MAXINSNS}: use unspecified addresses (0.0.0.0 / ::) to cover several \
         addresses of one port"
    )]
    TooLarge {
        /// Endpoints in the set.
        endpoints: usize,
        /// Instructions the program would need.
        instructions: usize,
    },
}

/// A jump target while the program is assembled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The next instruction.
    Next,
    /// A label resolved at the end.
    Label(usize),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Plain(BpfInstruction),
    /// Conditional jump with symbolic targets (must land within 255 instructions).
    Cond {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    /// Unconditional jump (32-bit offset).
    Always(usize),
    /// Marks a label position; emits nothing.
    Label(usize),
}

#[derive(Default)]
struct Assembler {
    ops: Vec<Op>,
    labels: usize,
}

impl Assembler {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    fn place(&mut self, label: usize) {
        self.ops.push(Op::Label(label));
    }

    fn plain(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Plain(BpfInstruction {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    fn jeq(&mut self, k: u32, jt: Target, jf: Target) {
        self.ops.push(Op::Cond {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            k,
            jt,
            jf,
        });
    }

    fn jset(&mut self, k: u32, jt: Target, jf: Target) {
        self.ops.push(Op::Cond {
            code: BPF_JMP | BPF_JSET | BPF_K,
            k,
            jt,
            jf,
        });
    }

    fn ja(&mut self, label: usize) {
        self.ops.push(Op::Always(label));
    }

    /// Resolves labels into offsets. Conditional jumps only target nearby labels by
    /// construction; a far one is reported as too large (never silently truncated).
    fn finish(self) -> Result<Vec<BpfInstruction>, usize> {
        let mut position = vec![0usize; self.labels];
        let mut index = 0usize;
        for op in &self.ops {
            match op {
                Op::Label(l) => position[*l] = index,
                _ => index += 1,
            }
        }
        let total = index;
        let mut out = Vec::with_capacity(total);
        for op in &self.ops {
            let here = out.len();
            let offset = |t: Target| -> Option<u8> {
                match t {
                    Target::Next => Some(0),
                    Target::Label(l) => u8::try_from(position[l].checked_sub(here + 1)?).ok(),
                }
            };
            match *op {
                Op::Label(_) => {}
                Op::Plain(i) => out.push(i),
                Op::Cond { code, k, jt, jf } => {
                    let (Some(jt), Some(jf)) = (offset(jt), offset(jf)) else {
                        return Err(total);
                    };
                    out.push(BpfInstruction { code, jt, jf, k });
                }
                Op::Always(l) => {
                    let Some(k) = position[l].checked_sub(here + 1) else {
                        return Err(total);
                    };
                    out.push(BpfInstruction {
                        code: BPF_JMP | BPF_JA,
                        jt: 0,
                        jf: 0,
                        k: k as u32,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Generates the filter passing TCP segments to and from `services` (see the module
/// documentation for what is and is not matched).
pub fn service_filter(
    services: &ServiceSet,
    options: FilterOptions,
) -> Result<Vec<BpfInstruction>, BpfError> {
    let endpoints = services.endpoints();
    if endpoints.is_empty() {
        return Err(BpfError::NoServices);
    }
    let mut asm = Assembler::default();
    let accept = asm.label();
    let reject = asm.label();
    let ipv4 = asm.label();
    let ipv6 = asm.label();
    let ipv6_tcp = asm.label();

    asm.plain(BPF_LD | BPF_H | BPF_ABS, ETH_TYPE);
    asm.jeq(ETHERTYPE_IPV4, Target::Label(ipv4), Target::Next);
    asm.jeq(ETHERTYPE_IPV6, Target::Label(ipv6), Target::Next);
    asm.ja(reject);

    // IPv4: TCP, first fragment (offset 0), then X = IP header length.
    asm.place(ipv4);
    let v4: Vec<&ServiceEndpoint> = endpoints.iter().filter(|e| e.addr.is_ipv4()).collect();
    if !v4.is_empty() {
        asm.plain(BPF_LD | BPF_B | BPF_ABS, IPV4_PROTOCOL);
        let tcp = asm.label();
        asm.jeq(IPPROTO_TCP, Target::Label(tcp), Target::Next);
        asm.ja(reject);
        asm.place(tcp);
        asm.plain(BPF_LD | BPF_H | BPF_ABS, IPV4_FLAGS_FRAGMENT);
        let first_fragment = asm.label();
        asm.jset(0x1fff, Target::Next, Target::Label(first_fragment));
        asm.ja(reject);
        asm.place(first_fragment);
        asm.plain(BPF_LDX | BPF_B | BPF_MSH, ETH_HEADER_LEN);
        for e in v4 {
            let IpAddr::V4(addr) = e.addr else { continue };
            let addr = (!addr.is_unspecified()).then(|| vec![u32::from(addr)]);
            // Ports are read relative to X (the IPv4 header length).
            endpoint_check(
                &mut asm,
                addr.as_deref(),
                IPV4_DST,
                IPV4_SRC,
                e.port,
                BPF_IND,
                ETH_HEADER_LEN,
                accept,
            );
        }
    }
    asm.ja(reject);

    // IPv6: TCP as the first next-header; extension headers go to user space if wanted.
    asm.place(ipv6);
    let v6: Vec<&ServiceEndpoint> = endpoints.iter().filter(|e| e.addr.is_ipv6()).collect();
    if !v6.is_empty() {
        asm.plain(BPF_LD | BPF_B | BPF_ABS, IPV6_NEXT_HEADER);
        asm.jeq(IPPROTO_TCP, Target::Label(ipv6_tcp), Target::Next);
        if options.pass_ipv6_extension_headers {
            for header in IPV6_EXTENSION_HEADERS {
                let not_this = asm.label();
                asm.jeq(header, Target::Next, Target::Label(not_this));
                asm.ja(accept);
                asm.place(not_this);
            }
        }
        asm.ja(reject);
        asm.place(ipv6_tcp);
        for e in v6 {
            let IpAddr::V6(addr) = e.addr else { continue };
            let words = (!addr.is_unspecified()).then(|| {
                addr.octets()
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>()
            });
            endpoint_check(
                &mut asm,
                words.as_deref(),
                IPV6_DST,
                IPV6_SRC,
                e.port,
                BPF_ABS,
                ETH_HEADER_LEN + IPV6_HEADER_LEN,
                accept,
            );
        }
    }
    asm.ja(reject);

    asm.place(accept);
    asm.plain(BPF_RET | BPF_K, options.snap_len);
    asm.place(reject);
    asm.plain(BPF_RET | BPF_K, 0);

    let program = asm.finish().map_err(|instructions| BpfError::TooLarge {
        endpoints: endpoints.len(),
        instructions,
    })?;
    if program.len() > BPF_MAXINSNS {
        return Err(BpfError::TooLarge {
            endpoints: endpoints.len(),
            instructions: program.len(),
        });
    }
    Ok(program)
}

/// Emits "(dst address == addr and dst port == port) or (src address == addr and src port
/// == port) → accept", falling through otherwise. `addr` is the address as big-endian words
/// (one for IPv4, four for IPv6), `None` for any address. Ports are loaded with `port_mode`
/// (`BPF_IND`: relative to X) at `tcp_offset` (+0 source port, +2 destination port).
#[allow(clippy::too_many_arguments)]
fn endpoint_check(
    asm: &mut Assembler,
    addr: Option<&[u32]>,
    dst_offset: u32,
    src_offset: u32,
    port: u16,
    port_mode: u16,
    tcp_offset: u32,
    accept: usize,
) {
    for (addr_offset, port_offset) in [(dst_offset, tcp_offset + 2), (src_offset, tcp_offset)] {
        let mismatch = asm.label();
        if let Some(words) = addr {
            for (i, word) in words.iter().enumerate() {
                asm.plain(BPF_LD | BPF_W | BPF_ABS, addr_offset + 4 * i as u32);
                asm.jeq(*word, Target::Next, Target::Label(mismatch));
            }
        }
        asm.plain(BPF_LD | BPF_H | port_mode, port_offset);
        asm.jeq(u32::from(port), Target::Next, Target::Label(mismatch));
        asm.ja(accept);
        asm.place(mismatch);
    }
}

/// Runs a program over `frame` as the kernel would (only the opcodes this module emits), and
/// returns the filter's verdict: the number of bytes to keep, 0 to drop. Out-of-bounds loads
/// drop the frame, as in the kernel. Meant for tests and for checking a program offline.
pub fn run(program: &[BpfInstruction], frame: &[u8]) -> u32 {
    let mut a: u32 = 0;
    let mut x: u32 = 0;
    let mut pc = 0usize;
    let load = |offset: u32, size: usize| -> Option<u32> {
        let start = offset as usize;
        let bytes = frame.get(start..start.checked_add(size)?)?;
        Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
    };
    let mut steps = 0usize;
    while let Some(i) = program.get(pc) {
        steps += 1;
        if steps > BPF_MAXINSNS {
            return 0;
        }
        pc += 1;
        let size = |code: u16| match code & 0x18 {
            BPF_W => 4,
            BPF_H => 2,
            _ => 1,
        };
        match i.code & 0x07 {
            BPF_LD => {
                let offset = match i.code & 0xe0 {
                    BPF_ABS => i.k,
                    BPF_IND => x.wrapping_add(i.k),
                    _ => return 0,
                };
                match load(offset, size(i.code)) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            BPF_LDX if i.code & 0xe0 == BPF_MSH => match load(i.k, 1) {
                Some(v) => x = 4 * (v & 0x0f),
                None => return 0,
            },
            BPF_JMP => {
                let taken = match i.code & 0xf0 {
                    BPF_JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    BPF_JEQ => a == i.k,
                    BPF_JSET => a & i.k != 0,
                    _ => return 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            BPF_RET => return i.k,
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    fn services(list: &[&str]) -> ServiceSet {
        ServiceSet::new(
            list.iter()
                .map(|s| ServiceEndpoint::new(s.parse::<SocketAddr>().expect("addr"))),
        )
    }

    fn ethernet(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, options: usize, payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + options / 4;
        let mut h = vec![0u8; ihl * 4];
        h[0] = 0x40 | ihl as u8;
        let total = (h.len() + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[8] = 64;
        h[9] = protocol;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        ethernet(0x0800, &h)
    }

    fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        ethernet(0x86dd, &h)
    }

    const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    #[test]
    fn passes_both_directions_of_ipv4_service_traffic_only() {
        let p = service_filter(&services(&["198.18.0.2:80"]), FilterOptions::default())
            .expect("program");
        let keep = FilterOptions::default().snap_len;
        assert_eq!(
            run(&p, &ipv4(CLIENT4, SERVER4, 6, 0, &tcp(40000, 80))),
            keep
        );
        assert_eq!(
            run(&p, &ipv4(SERVER4, CLIENT4, 6, 0, &tcp(80, 40000))),
            keep
        );
        // with IP options the ports move; the filter follows the IHL
        assert_eq!(
            run(&p, &ipv4(CLIENT4, SERVER4, 6, 8, &tcp(40000, 80))),
            keep
        );
        // another port, another address, another protocol, the port in the wrong direction
        assert_eq!(run(&p, &ipv4(CLIENT4, SERVER4, 6, 0, &tcp(40000, 81))), 0);
        assert_eq!(
            run(
                &p,
                &ipv4(CLIENT4, Ipv4Addr::new(198, 18, 0, 3), 6, 0, &tcp(40000, 80))
            ),
            0
        );
        assert_eq!(run(&p, &ipv4(CLIENT4, SERVER4, 17, 0, &tcp(40000, 80))), 0);
        assert_eq!(run(&p, &ipv4(CLIENT4, SERVER4, 6, 0, &tcp(80, 40000))), 0);
        // IPv6 and ARP are not services here
        assert_eq!(run(&p, &ipv6(CLIENT6, SERVER6, 6, &tcp(40000, 80))), 0);
        assert_eq!(run(&p, &ethernet(0x0806, &[0u8; 28])), 0);
    }

    #[test]
    fn drops_non_first_ipv4_fragments_and_truncated_frames() {
        let p = service_filter(&services(&["198.18.0.2:80"]), FilterOptions::default())
            .expect("program");
        let mut frag = ipv4(CLIENT4, SERVER4, 6, 0, &tcp(40000, 80));
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10; // fragment offset 16 × 8 bytes
        assert_eq!(run(&p, &frag), 0);
        let whole = ipv4(CLIENT4, SERVER4, 6, 0, &tcp(40000, 80));
        assert_eq!(
            run(&p, &whole[..14 + 20 + 2]),
            0,
            "ports cut off: no out-of-bounds pass"
        );
    }

    #[test]
    fn passes_ipv6_service_traffic_and_extension_headers_when_asked() {
        let set = services(&["[2001:db8::2]:443", "198.18.0.2:80"]);
        let p = service_filter(&set, FilterOptions::default()).expect("program");
        let keep = FilterOptions::default().snap_len;
        assert_eq!(run(&p, &ipv6(CLIENT6, SERVER6, 6, &tcp(40000, 443))), keep);
        assert_eq!(run(&p, &ipv6(SERVER6, CLIENT6, 6, &tcp(443, 40000))), keep);
        assert_eq!(run(&p, &ipv6(SERVER6, CLIENT6, 6, &tcp(444, 40000))), 0);
        assert_eq!(run(&p, &ipv6(CLIENT6, CLIENT6, 6, &tcp(40000, 443))), 0);
        assert_eq!(
            run(&p, &ipv6(CLIENT6, SERVER6, 58, &[0u8; 8])),
            0,
            "ICMPv6 dropped"
        );
        assert_eq!(
            run(&p, &ipv6(CLIENT6, SERVER6, 0, &[0u8; 48])),
            keep,
            "hop-by-hop passed up"
        );
        assert_eq!(
            run(&p, &ipv4(CLIENT4, SERVER4, 6, 0, &tcp(40000, 80))),
            keep
        );
        let strict = service_filter(
            &set,
            FilterOptions {
                pass_ipv6_extension_headers: false,
                ..FilterOptions::default()
            },
        )
        .expect("program");
        assert_eq!(run(&strict, &ipv6(CLIENT6, SERVER6, 0, &[0u8; 48])), 0);
        assert_eq!(
            run(&strict, &ipv6(CLIENT6, SERVER6, 6, &tcp(40000, 443))),
            keep
        );
    }

    #[test]
    fn unspecified_addresses_match_any_address_of_their_family() {
        let p = service_filter(
            &services(&["0.0.0.0:80", "[::]:80"]),
            FilterOptions::default(),
        )
        .expect("program");
        assert_ne!(
            run(
                &p,
                &ipv4(CLIENT4, Ipv4Addr::new(198, 19, 1, 1), 6, 0, &tcp(1234, 80))
            ),
            0
        );
        assert_ne!(run(&p, &ipv6(CLIENT6, SERVER6, 6, &tcp(1234, 80))), 0);
        assert_eq!(run(&p, &ipv6(CLIENT6, SERVER6, 6, &tcp(1234, 81))), 0);
    }

    #[test]
    fn empty_and_oversized_sets_are_refused() {
        assert_eq!(
            service_filter(&ServiceSet::default(), FilterOptions::default()),
            Err(BpfError::NoServices)
        );
        let many = ServiceSet::new((0..400u16).map(|i| ServiceEndpoint {
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, i)),
            port: 1000 + i,
        }));
        assert!(matches!(
            service_filter(&many, FilterOptions::default()),
            Err(BpfError::TooLarge { .. })
        ));
        // a large but legal set still works, including its last endpoint
        let fine = ServiceSet::new((0..150u16).map(|i| ServiceEndpoint {
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, i)),
            port: 1000 + i,
        }));
        let p = service_filter(&fine, FilterOptions::default()).expect("program");
        let last = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 149);
        assert_ne!(run(&p, &ipv6(CLIENT6, last, 6, &tcp(5, 1149))), 0);
        assert_eq!(run(&p, &ipv6(CLIENT6, last, 6, &tcp(5, 1148))), 0);
    }
}
