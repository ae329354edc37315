//! Wire representation of TCP segments: a checked parse of untrusted frames into a plain
//! [`SegmentRepr`] value, and the emission of a frame from one (smoltcp's Packet/Repr split).
//!
//! Parsing never panics and never verifies checksums: segments captured on the sending host
//! carry checksums the NIC fills in later (offload), and GSO/GRO segments can be far larger
//! than the MSS (see DESIGN.md, "Capture pitfalls"). Both are tracked by sequence range.

mod emit;
mod parse;
mod segment;

pub use emit::{EmitError, emit_frame};
pub use parse::{LinkType, ParseError, parse_frame};
pub use segment::{SackBlocks, SegmentRepr, TcpFlags, TcpOptions, TcpTimestamps};
