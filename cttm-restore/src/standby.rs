//! The standby daemon over TCP: [`TcpStandby`] implements the core's
//! [`StandbyConnector`].

use cttm_core::io::standby::StandbyConnector;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting a shadow session to the standby daemon may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A standby daemon listening on a TCP address of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStandby {
    address: SocketAddr,
    connect_timeout: Duration,
}

impl TcpStandby {
    /// The daemon at `address`, connected to within [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(address: SocketAddr) -> TcpStandby {
        TcpStandby {
            address,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The same daemon with another connect timeout.
    pub fn with_connect_timeout(self, connect_timeout: Duration) -> TcpStandby {
        TcpStandby {
            connect_timeout,
            ..self
        }
    }
}

impl StandbyConnector for TcpStandby {
    fn connect(&mut self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.address, self.connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    fn describe(&self) -> String {
        self.address.to_string()
    }
}
