//! The full general request path, bytes in and bytes out, over UDP and TCP semantics:
//! never panics; an answer, when there is one, parses and echoes the query's ID.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use gto::ConfigSource;
use gto::dns::Handler;
use gto::dns::handler::answer_bytes;
use gto::routing::Builder;
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static (Handler, tokio::runtime::Runtime) {
    static FIXTURE: OnceLock<(Handler, tokio::runtime::Runtime)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let loaded = ConfigSource::Embedded.load().expect("embedded config");
        let handler = Handler::new(Builder::new(loaded).handle());
        (
            handler,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (handler, runtime) = fixture();
    let (tcp, packet) = match data.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest),
        None => return,
    };
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    let src: SocketAddr = "192.0.2.1:5300".parse().expect("address");
    if let Some(answer) = runtime.block_on(answer_bytes(handler, packet, src, protocol)) {
        assert!(answer.len() >= 12);
        assert_eq!(answer[..2], packet[..2], "the answer echoes the ID");
        if !tcp {
            assert!(
                answer.len() <= 1232,
                "UDP answers stay within our payload size"
            );
        }
    }
});
