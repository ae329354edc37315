//! Helpers shared by the hand-written tests: crafted segments of one client/server pair and a
//! tracker harness that returns the events of each segment.
#![allow(dead_code, unreachable_pub)]

use cttm_core::endpoint::{ConnectionId, ServiceEndpoint, ServiceSet};
use cttm_core::event::{ConnectionEvent, EventKind};
use cttm_core::time::Instant;
use cttm_core::wire::{SegmentRepr, TcpFlags, TcpOptions, TcpTimestamps};
use cttm_core::{SeqNumber, Tracker, TrackerConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The service address used by the IPv4 tests.
pub const SERVER4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 80);
/// A client of [`SERVER4`].
pub const CLIENT4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 40_000);
/// The service address used by the IPv6 tests.
pub const SERVER6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    443,
);
/// A client of [`SERVER6`].
pub const CLIENT6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
    50_000,
);

/// The IPv4 connection identity.
pub fn id4() -> ConnectionId {
    ConnectionId {
        client: CLIENT4,
        server: SERVER4,
    }
}

/// The IPv6 connection identity.
pub fn id6() -> ConnectionId {
    ConnectionId {
        client: CLIENT6,
        server: SERVER6,
    }
}

/// A tracker configuration protecting both services.
pub fn config() -> TrackerConfig {
    TrackerConfig::new(ServiceSet::new([
        ServiceEndpoint::new(SERVER4),
        ServiceEndpoint::new(SERVER6),
    ]))
}

/// An owned segment under construction.
#[derive(Clone, Debug)]
pub struct Seg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub options: TcpOptions,
    pub payload: Vec<u8>,
}

impl Seg {
    /// A segment from the client of `id` to its server.
    pub fn client(id: ConnectionId, seq: u32) -> Seg {
        Seg::new(id.client, id.server, seq)
    }

    /// A segment from the server of `id` to its client.
    pub fn server(id: ConnectionId, seq: u32) -> Seg {
        Seg::new(id.server, id.client, seq)
    }

    fn new(src: SocketAddr, dst: SocketAddr, seq: u32) -> Seg {
        Seg {
            src,
            dst,
            seq,
            ack: 0,
            flags: TcpFlags::default(),
            window: 1000,
            options: TcpOptions::default(),
            payload: Vec::new(),
        }
    }

    pub fn syn(mut self) -> Seg {
        self.flags = self.flags.with(TcpFlags::SYN);
        self
    }

    pub fn fin(mut self) -> Seg {
        self.flags = self.flags.with(TcpFlags::FIN);
        self
    }

    pub fn rst(mut self) -> Seg {
        self.flags = self.flags.with(TcpFlags::RST);
        self
    }

    pub fn psh(mut self) -> Seg {
        self.flags = self.flags.with(TcpFlags::PSH);
        self
    }

    pub fn ack(mut self, ack: u32) -> Seg {
        self.flags = self.flags.with(TcpFlags::ACK);
        self.ack = ack;
        self
    }

    pub fn win(mut self, window: u16) -> Seg {
        self.window = window;
        self
    }

    pub fn data(mut self, bytes: &[u8]) -> Seg {
        self.payload = bytes.to_vec();
        self
    }

    pub fn mss(mut self, mss: u16) -> Seg {
        self.options.mss = Some(mss);
        self
    }

    pub fn wscale(mut self, shift: u8) -> Seg {
        self.options.window_scale = Some(shift);
        self
    }

    pub fn sack_ok(mut self) -> Seg {
        self.options.sack_permitted = true;
        self
    }

    pub fn sack(mut self, left: u32, right: u32) -> Seg {
        self.options.sack.push(SeqNumber(left), SeqNumber(right));
        self
    }

    pub fn ts(mut self, tsval: u32, tsecr: u32) -> Seg {
        self.options.timestamps = Some(TcpTimestamps { tsval, tsecr });
        self
    }

    /// The plain segment value the tracker takes.
    pub fn repr(&self) -> SegmentRepr<'_> {
        SegmentRepr {
            src: self.src,
            dst: self.dst,
            seq: SeqNumber(self.seq),
            ack: SeqNumber(self.ack),
            flags: self.flags,
            window: self.window,
            options: self.options,
            payload: &self.payload,
        }
    }
}

/// A tracker with the events of every segment fed so far.
pub struct Harness {
    pub tracker: Tracker,
    pub events: Vec<ConnectionEvent>,
}

impl Harness {
    pub fn new(config: TrackerConfig) -> Harness {
        Harness {
            tracker: Tracker::new(config),
            events: Vec::new(),
        }
    }

    /// Feeds `seg` at `ms` milliseconds and returns the kinds of the events it produced, after
    /// checking that each carries the capture time.
    pub fn feed(&mut self, ms: u64, seg: &Seg) -> Vec<EventKind> {
        let at = Instant::from_millis(ms);
        let mut out = Vec::new();
        self.tracker.on_segment(at, &seg.repr(), &mut out);
        for e in &out {
            assert_eq!(e.at, at, "event {e:?} carries the wrong time");
        }
        self.events.extend(out.iter().cloned());
        out.into_iter().map(|e| e.kind).collect()
    }
}

/// Client ISN used by most tests.
pub const CISN: u32 = 1_000;
/// Server ISN used by most tests.
pub const SISN: u32 = 5_000_000;

/// Runs a plain handshake (no options; windows 1000/2000 on the SYNs) on `id` at 0, 1, 2 ms.
pub fn plain_handshake(h: &mut Harness, id: ConnectionId) {
    assert!(h.feed(0, &Seg::client(id, CISN).syn().win(1000)).is_empty());
    let opened = h.feed(1, &Seg::server(id, SISN).syn().ack(CISN + 1).win(2000));
    assert!(
        matches!(opened.as_slice(), [EventKind::Opened(_)]),
        "{opened:?}"
    );
    let acked = h.feed(2, &Seg::client(id, CISN + 1).ack(SISN + 1).win(1000));
    assert_eq!(
        acked,
        vec![EventKind::ClientAck {
            offset: 0,
            seq_offset: 0,
            window: 1000,
            timestamps: None
        }]
    );
}
