//! An in-process transport pair: two ends joined by a link that tests can cut and restore.

use super::{ReplicationTransport, TransportError};
use crate::wire::WireMessage;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
struct LinkState {
    up: bool,
    epoch: u64,
    /// Messages in flight towards end 0 and end 1.
    queues: [VecDeque<WireMessage>; 2],
}

#[derive(Debug, Default)]
struct Link {
    state: Mutex<LinkState>,
    arrived: Condvar,
}

/// One end of an in-memory link.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    link: Arc<Link>,
    end: usize,
}

/// Cuts and restores an in-memory link (both ends see it).
#[derive(Debug, Clone)]
pub struct MemoryLinkControl {
    link: Arc<Link>,
}

impl MemoryTransport {
    /// Two ends of a new link, which is up.
    pub fn pair() -> (MemoryTransport, MemoryTransport, MemoryLinkControl) {
        let link = Arc::new(Link::default());
        link.state.lock().up = true;
        link.state.lock().epoch = 1;
        (
            MemoryTransport {
                link: link.clone(),
                end: 0,
            },
            MemoryTransport {
                link: link.clone(),
                end: 1,
            },
            MemoryLinkControl { link },
        )
    }
}

impl MemoryLinkControl {
    /// Breaks the link: messages in flight are lost, sends fail.
    pub fn cut(&self) {
        let mut s = self.link.state.lock();
        s.up = false;
        s.queues = Default::default();
    }

    /// Establishes a new link (a new [`ReplicationTransport::link_epoch`]).
    pub fn restore(&self) {
        let mut s = self.link.state.lock();
        if !s.up {
            s.up = true;
            s.epoch += 1;
        }
    }

    /// True while the link is up.
    pub fn is_up(&self) -> bool {
        self.link.state.lock().up
    }
}

impl ReplicationTransport for MemoryTransport {
    fn send(&self, message: &WireMessage) -> Result<(), TransportError> {
        let mut s = self.link.state.lock();
        if !s.up {
            return Err(TransportError::LinkDown);
        }
        s.queues[1 - self.end].push_back(message.clone());
        self.link.arrived.notify_all();
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> Result<Option<WireMessage>, TransportError> {
        let mut s = self.link.state.lock();
        if let Some(m) = s.queues[self.end].pop_front() {
            return Ok(Some(m));
        }
        if timeout.is_zero() {
            return Ok(None);
        }
        let _ = self.link.arrived.wait_for(&mut s, timeout);
        Ok(s.queues[self.end].pop_front())
    }

    fn is_up(&self) -> bool {
        self.link.state.lock().up
    }

    fn link_epoch(&self) -> u64 {
        self.link.state.lock().epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::Instant;

    #[test]
    fn a_cut_loses_messages_in_flight_and_a_restore_is_a_new_link() {
        let (a, b, link) = MemoryTransport::pair();
        let hb = WireMessage::Heartbeat {
            sent_at: Instant::ZERO,
        };
        a.send(&hb).unwrap();
        link.cut();
        assert!(!a.is_up() && !b.is_up());
        assert!(matches!(a.send(&hb), Err(TransportError::LinkDown)));
        assert_eq!(b.recv(Duration::ZERO).unwrap(), None);
        let epoch = b.link_epoch();
        link.restore();
        assert_eq!(b.link_epoch(), epoch + 1);
        a.send(&hb).unwrap();
        assert_eq!(b.recv(Duration::from_millis(10)).unwrap(), Some(hb));
    }
}
