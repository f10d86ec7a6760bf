//! The UDP fast path on arbitrary packets: never panics, and whatever it answers, the
//! general path answers the same bytes.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use gto::ConfigSource;
use gto::dns::Handler;
use gto::dns::fast::{FastScratch, Reply, respond};
use gto::dns::handler::answer_bytes;
use gto::routing::{Builder, Snapshot};
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    handler: Handler,
    snapshot: Arc<Snapshot>,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/peers/gto.toml");
        let dir = std::env::temp_dir().join("gto-fuzz-fast-path");
        let _ = std::fs::create_dir_all(&dir);
        let config = std::fs::read_to_string(path)
            .unwrap_or_default()
            .replace("@PORT@", "0")
            .replace(
                "@ZONE@",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../zones/gto.example.com.zone"),
            );
        let _ = std::fs::write(dir.join("gto.toml"), config);
        let loaded = ConfigSource::File(dir.join("gto.toml"))
            .load()
            .expect("fixture config");
        let routing = Builder::new(loaded).handle();
        Fixture {
            handler: Handler::new(routing.clone()),
            snapshot: routing.load_full(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
        }
    })
}

fuzz_target!(|packet: &[u8]| {
    let f = fixture();
    let ip: IpAddr = [127, 0, 0, 1].into();
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    if let Reply::Send(len) = respond(
        &f.snapshot,
        &f.snapshot.fast,
        packet,
        ip,
        &mut scratch,
        &mut out,
    ) {
        let general = f.runtime.block_on(answer_bytes(
            &f.handler,
            packet,
            SocketAddr::new(ip, 5300),
            Protocol::Udp,
        ));
        assert_eq!(
            Some(&out[..len]),
            general.as_deref(),
            "fast and general paths differ"
        );
    }
});
