//! kvd over real loopback TCP: replies, pipelining, streams, per-connection state, QUIT,
//! over-long lines, and that `--diverge` really changes the output.

use cttm_kvd::{MAX_LINE, Server, ServerOptions, StreamGenerator};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn server(options: ServerOptions) -> Server {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Server::start(&[any], options).expect("bind loopback")
}

fn connect(server: &Server) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(server.addresses()[0]).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("reply");
    assert!(l.ends_with('\n'), "reply line {l:?} not terminated");
    l.pop();
    l
}

#[test]
fn pipelined_requests_get_ordered_replies_and_state_is_per_connection() {
    let server = server(ServerOptions::default());
    let (mut r1, mut w1) = connect(&server);
    let (mut r2, mut w2) = connect(&server);
    w1.write_all(b"SET a 1\r\nINCR a 9\nGET a\nCOUNT\nPING\n")
        .unwrap();
    w2.write_all(b"GET a\nCOUNT\n").unwrap();
    let got: Vec<String> = (0..5).map(|_| read_line(&mut r1)).collect();
    assert_eq!(got, ["OK", "10", "VALUE 10", "4", "PONG"]);
    assert_eq!(read_line(&mut r2), "NONE");
    assert_eq!(read_line(&mut r2), "2");
    w1.write_all(b"QUIT\n").unwrap();
    assert_eq!(read_line(&mut r1), "BYE");
    let mut rest = Vec::new();
    r1.read_to_end(&mut rest).expect("server closes after BYE");
    assert!(rest.is_empty());
}

#[test]
fn a_large_stream_arrives_intact_with_its_checksum() {
    let server = server(ServerOptions::default());
    let (mut r, mut w) = connect(&server);
    let len = 5_000_000u64;
    w.write_all(format!("STREAM {len} 42\nCOUNT\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut r), format!("DATA {len}"));
    let mut expected = StreamGenerator::new(42, len);
    let mut got = vec![0u8; 100_000];
    let mut want = vec![0u8; 100_000];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(got.len());
        r.read_exact(&mut got[..n]).expect("stream bytes");
        assert_eq!(expected.fill(&mut want[..n]), n);
        assert_eq!(
            got[..n],
            want[..n],
            "stream differs before offset {}",
            len as usize - left + n
        );
        left -= n;
    }
    assert_eq!(read_line(&mut r), "");
    assert_eq!(read_line(&mut r), expected.sum_line());
    assert_eq!(read_line(&mut r), "2");
}

#[test]
fn an_over_long_line_is_refused_and_the_connection_closed() {
    let server = server(ServerOptions::default());
    let (mut r, mut w) = connect(&server);
    let long = vec![b'x'; MAX_LINE + 1];
    // exactly one byte too many: the server reads all of it, so its close sends a FIN, not a RST
    let _ = w.write_all(&long);
    let reply = read_line(&mut r);
    assert!(reply.starts_with("ERR request longer than"), "{reply}");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn two_deterministic_servers_answer_alike_and_diverging_ones_do_not() {
    let conversation = b"SET k v\nINCR n\nINCR n\nCOUNT\nSTREAM 1000 5\nGET k\nQUIT\n";
    let run = |server: &Server| {
        let (mut r, mut w) = connect(server);
        w.write_all(conversation).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).expect("read all");
        all
    };
    let a = server(ServerOptions::default());
    let b = server(ServerOptions::default());
    let from_a = run(&a);
    assert_eq!(from_a, run(&b));
    assert!(from_a.ends_with(b"VALUE v\nBYE\n"));
    let d = server(ServerOptions { diverge: true });
    let from_d = run(&d);
    assert_ne!(from_a, from_d);
    assert!(String::from_utf8_lossy(&from_d).contains(" pid="));
}

#[test]
fn a_stopped_server_accepts_no_more_connections() {
    let s = server(ServerOptions::default());
    let address = s.addresses()[0];
    s.stop();
    assert!(TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err());
}
