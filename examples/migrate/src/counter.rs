//! The echo/counter service over one non-blocking connection, with its state encodable so it
//! can travel with the connection.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Longest line accepted (a client sending more without a newline is cut off).
const MAX_LINE: usize = 64 * 1024;
/// Answers waiting to be written before the service stops reading a connection.
const MAX_OUTPUT: usize = 256 * 1024;
/// Version byte of the encoded state.
const STATE_VERSION: u8 = 1;

/// One connection of the service.
#[derive(Debug)]
pub(crate) struct CounterConnection {
    stream: TcpStream,
    /// Lines answered so far.
    lines: u64,
    /// The start of a line not yet complete.
    partial: Vec<u8>,
    /// Answers not yet written.
    output: Vec<u8>,
    /// The client closed its sending side.
    client_done: bool,
}

/// What one [`CounterConnection::step`] did.
pub(crate) struct Step {
    /// Bytes moved.
    pub(crate) progressed: bool,
    /// The connection is over (client closed, every answer written, our side closed).
    pub(crate) finished: bool,
}

impl CounterConnection {
    /// A new client.
    pub(crate) fn new(stream: TcpStream) -> io::Result<CounterConnection> {
        stream.set_nonblocking(true)?;
        Ok(CounterConnection {
            stream,
            lines: 0,
            partial: Vec::new(),
            output: Vec::new(),
            client_done: false,
        })
    }

    /// The state to ship with the connection: version, lines, flags, partial line, output.
    pub(crate) fn encode_state(&self) -> Vec<u8> {
        let mut state = Vec::with_capacity(22 + self.partial.len() + self.output.len());
        state.push(STATE_VERSION);
        state.extend_from_slice(&self.lines.to_be_bytes());
        state.push(u8::from(self.client_done));
        state.extend_from_slice(&(self.partial.len() as u32).to_be_bytes());
        state.extend_from_slice(&self.partial);
        state.extend_from_slice(&self.output);
        state
    }

    /// A connection continued from a shipped state (which may come from another host: checked).
    pub(crate) fn decode(stream: TcpStream, state: &[u8]) -> io::Result<CounterConnection> {
        let invalid = |what: &str| {
            io::Error::new(ErrorKind::InvalidData, format!("connection state: {what}"))
        };
        if state.len() < 14 || state[0] != STATE_VERSION {
            return Err(invalid("unknown version or too short"));
        }
        let lines = u64::from_be_bytes(state[1..9].try_into().map_err(|_| invalid("lines"))?);
        let client_done = state[9] == 1;
        let partial_len =
            u32::from_be_bytes(state[10..14].try_into().map_err(|_| invalid("length"))?) as usize;
        let partial = state
            .get(14..14 + partial_len)
            .ok_or_else(|| invalid("partial line cut short"))?
            .to_vec();
        let output = state[14 + partial_len..].to_vec();
        stream.set_nonblocking(true)?;
        Ok(CounterConnection {
            stream,
            lines,
            partial,
            output,
            client_done,
        })
    }

    /// The socket.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes what it can, reads what it can, answers complete lines.
    pub(crate) fn step(&mut self) -> io::Result<Step> {
        let mut progressed = false;
        if !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                    progressed |= n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if !self.client_done && self.output.len() < MAX_OUTPUT {
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.client_done = true;
                    progressed = true;
                }
                Ok(n) => {
                    self.take_input(&buf[..n])?;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let finished = self.client_done && self.output.is_empty();
        if finished {
            self.stream.shutdown(Shutdown::Write)?;
        }
        Ok(Step {
            progressed,
            finished,
        })
    }

    fn take_input(&mut self, mut data: &[u8]) -> io::Result<()> {
        while let Some(end) = data.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[..end]);
            data = &data[end + 1..];
            self.lines += 1;
            let line = std::mem::take(&mut self.partial);
            self.output
                .extend_from_slice(format!("{} ", self.lines).as_bytes());
            self.output.extend_from_slice(&line);
            self.output.push(b'\n');
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() > MAX_LINE {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "line longer than 64 KiB",
            ));
        }
        Ok(())
    }
}
