//! The health scheduler at scale: 100 pools x 100 endpoints = 10,000 distinct TCP targets,
//! each a real listener on 127.0.0.1, probed every 2 s with at most 512 probes in flight.
//!
//! Reports (stderr) the time until every endpoint has its first result, and the CPU the
//! probing side uses per second of steady state (threads named `gto-probe`, read from
//! /proc; the listeners run on their own `appliance` threads and are not counted).
//! `cargo bench --bench scheduler`; under `cargo nextest` it runs once with 500 targets.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use gto::ConfigSource;
use gto::health;
use gto::routing::Builder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// CPU seconds (user, system) used so far by this process's threads whose name starts
/// with `prefix`.
fn thread_cpu(prefix: &str) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let (mut user, mut system) = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
        user += utime / ticks;
        system += stime / ticks;
    }
    (user, system)
}

fn config(ports: &[u16], pools: usize) -> String {
    let per_pool = ports.len() / pools;
    let mut text = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"gto.example.com.\"\nfile = \"zone\"\n",
    );
    for pool in 0..pools {
        write!(
            text,
            "[[service]]\nname = \"s{pool}.gto.example.com.\"\npool = \"p{pool}\"\n[[pool]]\nname = \"p{pool}\"\ncheck = {{ kind = \"tcp\", interval = \"2s\", timeout = \"1s\" }}\n"
        )
        .unwrap();
        for member in 0..per_pool {
            let port = ports[pool * per_pool + member];
            write!(
                text,
                "[[pool.member]]\nname = \"m{member}\"\naddresses = [\"127.0.0.1\"]\ncheck = {{ port = {port} }}\n"
            )
            .unwrap();
        }
    }
    text
}

fn scheduler(c: &mut Criterion) {
    let (pools, per_pool) = if benching() { (100, 100) } else { (10, 50) };
    let targets = pools * per_pool;

    // The appliances: real listeners that accept and close, on their own runtime.
    let appliances = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("appliance")
        .enable_all()
        .build()
        .unwrap();
    let ports: Vec<u16> = appliances.block_on(async {
        let mut ports = Vec::with_capacity(targets);
        for _ in 0..targets {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            });
        }
        ports
    });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    std::fs::write(dir.path().join("gto.toml"), config(&ports, pools)).unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gto-probe")
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    group.bench_function(format!("first_full_round/{targets}_targets"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += runtime.block_on(async {
                    let builder = Builder::new(loaded.clone());
                    let (events, receiver) = mpsc::channel(1024);
                    let token = CancellationToken::new();
                    let builder_task = tokio::spawn(builder.run(receiver, token.child_token()));
                    let started = Instant::now();
                    let (handle, task) =
                        health::spawn(&loaded, None, None, Some(events), token.child_token());
                    while handle.checked() < targets {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let round = started.elapsed();
                    token.cancel();
                    task.await.unwrap();
                    builder_task.await.unwrap();
                    round
                });
            }
            total
        })
    });
    group.finish();

    // Steady state: CPU per second of wall time while every target is probed each ~2 s.
    let window = if benching() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    };
    let (cpu, wall, round) = runtime.block_on(async {
        let builder = Builder::new(loaded.clone());
        let (events, receiver) = mpsc::channel(1024);
        let token = CancellationToken::new();
        let builder_task = tokio::spawn(builder.run(receiver, token.child_token()));
        let started = Instant::now();
        let (handle, task) = health::spawn(&loaded, None, None, Some(events), token.child_token());
        while handle.checked() < targets {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let round = started.elapsed();
        let cpu_before = thread_cpu("gto-probe");
        let wall_before = Instant::now();
        tokio::time::sleep(window).await;
        let cpu_after = thread_cpu("gto-probe");
        let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
        let wall = wall_before.elapsed();
        let status = handle.status().await;
        assert_eq!(status.len(), targets);
        assert!(
            status
                .iter()
                .all(|s| s.health == health::state::Health::Up && !s.stale)
        );
        token.cancel();
        task.await.unwrap();
        builder_task.await.unwrap();
        (cpu, wall, round)
    });
    let (user, system) = cpu;
    eprintln!(
        "scheduler: {targets} targets, first full round {round:.2?}, steady state {:.1} % of one core \
         ({user:.2} s user + {system:.2} s system over {wall:.1?})",
        100.0 * (user + system) / wall.as_secs_f64()
    );
    drop(appliances);
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
