//! `cttmd status` as text: the agent's summary, then one table row per connection.

use super::{AgentView, ConnectionView, ProtectionState};
use std::fmt::Write;

/// The human-readable status of an agent: role, mode, replication link and lag, held
/// packets, counters, alerts, then a table of every connection (client, server, protection
/// state, lag in bytes and milliseconds, held packets, why it is not protected).
pub fn render_status(view: &AgentView) -> String {
    let mut out = String::new();
    summary(&mut out, view);
    connections_table(&mut out, &view.connections);
    out
}

fn summary(out: &mut String, view: &AgentView) {
    let c = &view.counters;
    let _ = writeln!(out, "role         {}", view.role.name());
    let _ = writeln!(out, "mode         {}", view.mode.name());
    let _ = writeln!(
        out,
        "replication  link {}, lag {} bytes, {} ms",
        if view.link_up { "up" } else { "down" },
        view.lag_bytes,
        view.lag_ms
    );
    let _ = writeln!(out, "held         {} packets now", view.held_packets);
    if let Some(ms) = view.failover_ms {
        let _ = writeln!(out, "failover     {ms:.1} ms");
    }
    let _ = writeln!(
        out,
        "counters     segments {}, connections opened {}, replicated bytes client {} / server {}",
        c.segments, c.connections_opened, c.bytes_replicated_client, c.bytes_replicated_server
    );
    let _ = writeln!(
        out,
        "             held {}, released unprotected {}, dropped frames {}, degradations {}, takeovers {}, takeovers refused {}",
        c.held_packets,
        c.released_unprotected,
        c.dropped_frames,
        c.degradations,
        c.takeovers,
        c.takeovers_refused
    );
    let hold = &view.hold_time;
    if hold.count > 0 {
        let _ = writeln!(
            out,
            "hold time    {} packets, mean {} us",
            hold.count,
            hold.sum_us / hold.count
        );
    }
    if view.alerts.is_empty() {
        let _ = writeln!(out, "alerts       none");
    } else {
        for (i, alert) in view.alerts.iter().enumerate() {
            let label = if i == 0 { "alerts" } else { "" };
            let _ = writeln!(out, "{label:<12} ! {}", one_line(alert));
        }
    }
    let by_state: Vec<String> = ProtectionState::ALL
        .iter()
        .map(|&s| (s, view.count(s)))
        .filter(|&(_, n)| n > 0)
        .map(|(s, n)| format!("{} {n}", s.name()))
        .collect();
    let _ = write!(out, "connections  {}", view.connections.len());
    if !by_state.is_empty() {
        let _ = write!(out, " ({})", by_state.join(", "));
    }
    out.push('\n');
}

const HEADER: [&str; 7] = [
    "CLIENT",
    "SERVER",
    "STATE",
    "LAG-BYTES",
    "LAG-MS",
    "HELD",
    "DETAIL",
];

fn connections_table(out: &mut String, connections: &[ConnectionView]) {
    if connections.is_empty() {
        return;
    }
    let rows: Vec<[String; 7]> = connections
        .iter()
        .map(|c| {
            [
                c.client.to_string(),
                c.server.to_string(),
                c.state.name().to_string(),
                c.lag_bytes.to_string(),
                c.lag_ms.to_string(),
                c.held_packets.to_string(),
                c.detail.as_deref().map(one_line).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    out.push('\n');
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            match i {
                // numbers right-aligned, the last column unpadded
                3..=5 => {
                    let _ = write!(line, "{cell:>width$}  ");
                }
                6 => line.push_str(cell),
                _ => {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `text` on one line: control characters (newlines from an error's chain, say) become
/// spaces, so a row stays a row.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{AgentRole, CommitState};

    fn connection(client: &str, state: ProtectionState, detail: Option<&str>) -> ConnectionView {
        ConnectionView {
            client: client.parse().unwrap(),
            server: "198.18.0.10:7000".parse().unwrap(),
            state,
            lag_bytes: 1234,
            lag_ms: 56,
            held_packets: 7,
            detail: detail.map(String::from),
        }
    }

    #[test]
    fn text_lists_the_summary_and_every_connection() {
        let mut view = AgentView::new(AgentRole::Primary, CommitState::Degraded);
        view.link_up = false;
        view.lag_bytes = 99;
        view.lag_ms = 1500;
        view.counters.degradations = 2;
        view.alerts = vec!["degraded:\nthe backup is unreachable".into()];
        view.connections = vec![
            connection("198.18.0.1:40000", ProtectionState::Protected, None),
            connection(
                "[2001:db8::1]:40001",
                ProtectionState::Unprotected,
                Some("capture hole"),
            ),
        ];
        let text = render_status(&view);
        for expected in [
            "role         primary",
            "mode         degraded",
            "link down, lag 99 bytes, 1500 ms",
            "degradations 2",
            "! degraded: the backup is unreachable",
            "connections  2 (protected 1, unprotected 1)",
            "CLIENT",
            "DETAIL",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        let rows: Vec<&str> = text.lines().filter(|l| l.contains(":7000")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].starts_with("198.18.0.1:40000") && rows[0].contains("protected"));
        assert!(rows[1].starts_with("[2001:db8::1]:40001"));
        assert!(rows[1].ends_with("capture hole"), "{}", rows[1]);
        for row in rows {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(&cells[3..6], ["1234", "56", "7"], "{row}");
        }
    }

    #[test]
    fn an_idle_agent_has_no_table() {
        let view = AgentView::new(AgentRole::Backup, CommitState::Async);
        let text = render_status(&view);
        assert!(text.contains("alerts       none"), "{text}");
        assert!(text.contains("connections  0\n"), "{text}");
        assert!(!text.contains("CLIENT"), "{text}");
        assert!(!text.contains("failover"), "{text}");
    }
}
