//! `cttmd`: the CTTM agent (being written).
fn main() {}
