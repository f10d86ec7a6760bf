//! The fleet simulator: N gto instances in one process, each with the real fleet code
//! (registration under a lease, heartbeats, the watch, votes) and the real health monitor
//! (rise/fall, verdicts, the vote rules), against a real etcd on loopback. Probes are
//! simulated ([`gto::health::simulate`]): when the script changes an endpoint, each
//! instance's monitor gets the probe outcomes that confirm it at the time its own
//! schedule would have (the next probe at a random point of the interval, then a quarter
//! interval, then whole intervals, as the scheduler probes), so 30 instances of 10,000
//! endpoints do not run 300,000 probe tasks on one machine (the cost of probing itself is
//! `benches/scheduler.rs`'s).
//!
//! For each fleet size and endpoint count it runs a timeline — steady state, a 10 % outage
//! (every tenth endpoint of every pool), recovery, a 100 % outage, recovery, 1 % of the
//! endpoints flapping — and reports etcd's writes (raft proposals) per second, the keys
//! and bytes written, the watch events delivered per instance, the time until every
//! instance's view (the endpoint flips its monitor hands the snapshot builder) agrees
//! with the script (p50/p99/max over instances), etcd's db size (and what a compaction
//! leaves), and the CPU per instance (the process's CPU over N; etcd's own apart).
//!
//! `cargo bench --bench fleet` runs N = 3, 10, 30 x 1,000 and 10,000 endpoints (set
//! `FLEET_SIZES=3,10` and `FLEET_ENDPOINTS=1000` to choose; `RUST_LOG=warn` shows the
//! instances' logs; `FLEET_PHASES=1` prints a line as each scripted change starts, to
//! attach a profiler to the outage alone, then every 0.5 s how many instances agree and
//! how many endpoints they have left, and the process's CPU-seconds until all agreed);
//! under `cargo nextest` it runs once, small (3 x 200, 0.5 s interval), and asserts
//! convergence within `interval x fall + 2 s` and no vote written in steady state.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use gto::ConfigSource;
use gto::cluster::{Fleet, InstanceInfo};
use gto::routing::{BuildEvent, Change, EndpointKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The binary's allocator (`src/main.rs`): the instances allocate as gto does. Under the
/// system allocator, 30 instances' threads spent half the process's CPU in it and its
/// arena locks in a mass outage.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POOL_SIZE: usize = 100;

/// Probe timing of one run.
#[derive(Clone, Copy)]
struct Timing {
    interval: Duration,
    fall: u32,
    rise: u32,
    steady: Duration,
    flapping: Duration,
}

impl Timing {
    /// How long a change may take to reach every instance: the probes' own delay
    /// (interval x fall) and 2 s for the fleet.
    fn bound(&self) -> Duration {
        self.interval * self.fall + Duration::from_secs(2)
    }
}

/// The script: the addresses whose probes fail, of how many endpoints.
struct Down(ArcSwap<HashSet<IpAddr>>, std::sync::atomic::AtomicUsize);

impl Down {
    fn endpoints(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl gto::health::simulate::Script for Down {
    fn up(&self, target: SocketAddr) -> bool {
        !self.0.load().contains(&target.ip())
    }
}

fn address(endpoint: usize) -> IpAddr {
    let n = u32::try_from(endpoint).unwrap() + 1;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
}

fn key(endpoint: usize) -> EndpointKey {
    EndpointKey {
        pool: format!("p{}", endpoint / POOL_SIZE),
        member: format!("m{}", endpoint % POOL_SIZE),
    }
}

/// A real etcd on loopback with its own data directory, ended by its PID.
struct Etcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=sim")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=sim={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is not installed: apt-get install -y etcd-server");
        let etcd = Self {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(mut client) = etcd_client::Client::connect([etcd.url()], None).await
                && client.put("/ready", "1", None).await.is_ok()
            {
                return etcd;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "etcd not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    /// etcd's CPU seconds so far.
    fn cpu(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of etcd's Prometheus metrics `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// User + system CPU seconds of the process whose `stat` file is `path`.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// What etcd and this process have done so far.
#[derive(Clone, Copy, Default)]
struct Counters {
    proposals: f64,
    puts: f64,
    put_bytes: f64,
    events: f64,
    cpu: f64,
    etcd_cpu: f64,
    at: Option<Instant>,
}

async fn counters(etcd: &Etcd) -> Counters {
    let text = etcd.metrics().await;
    Counters {
        proposals: metric(&text, "etcd_server_proposals_committed_total"),
        puts: metric(&text, "etcd_mvcc_put_total"),
        put_bytes: metric(&text, "etcd_debugging_mvcc_total_put_size_in_bytes"),
        events: metric(&text, "etcd_debugging_mvcc_events_total"),
        cpu: cpu_of("/proc/self/stat"),
        etcd_cpu: etcd.cpu(),
        at: Some(Instant::now()),
    }
}

/// Rates between two [`Counters`].
struct Rates {
    secs: f64,
    writes: f64,
    keys: f64,
    bytes: f64,
    events: f64,
    cpu: f64,
    etcd_cpu: f64,
}

fn rates(a: Counters, b: Counters) -> Rates {
    let secs = match (a.at, b.at) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    Rates {
        secs,
        writes: b.proposals - a.proposals,
        keys: b.puts - a.puts,
        bytes: b.put_bytes - a.put_bytes,
        events: b.events - a.events,
        cpu: b.cpu - a.cpu,
        etcd_cpu: b.etcd_cpu - a.etcd_cpu,
    }
}

/// One instance's view: the endpoints its monitor has told the builder are down, and how
/// many of them differ from what the script says.
struct View {
    down: HashSet<EndpointKey>,
    expected: Arc<HashSet<EndpointKey>>,
    mismatches: usize,
    agreed_at: Option<Instant>,
}

impl View {
    fn expect(&mut self, expected: Arc<HashSet<EndpointKey>>) {
        self.mismatches = self.down.symmetric_difference(&expected).count();
        self.expected = expected;
        self.agreed_at = (self.mismatches == 0).then(Instant::now);
    }

    fn flip(&mut self, key: EndpointKey, up: bool) {
        let was_right = self.down.contains(&key) == self.expected.contains(&key);
        if up {
            self.down.remove(&key);
        } else {
            self.down.insert(key.clone());
        }
        let is_right = self.down.contains(&key) == self.expected.contains(&key);
        match (was_right, is_right) {
            (true, false) => self.mismatches += 1,
            (false, true) => self.mismatches -= 1,
            _ => {}
        }
        if self.mismatches == 0 && self.agreed_at.is_none() {
            self.agreed_at = Some(Instant::now());
        } else if self.mismatches > 0 {
            self.agreed_at = None;
        }
    }
}

struct Instance {
    view: Arc<Mutex<View>>,
    fleet: Fleet,
    health: gto::health::HealthHandle,
}

fn config(dir: &Path, etcd: &str, id: usize, endpoints: usize, timing: Timing) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nenabled = false\n\
         [cluster]\netcd = [\"{etcd}\"]\nname = \"sim\"\ninstance = \"sim-{id}\"\nlease_ttl = \"10s\"\n\
         [[zone]]\norigin = \"gto.example.com.\"\nfile = \"zone\"\n\
         [[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p0\"\n"
    );
    for pool in 0..endpoints.div_ceil(POOL_SIZE) {
        write!(
            text,
            "[[pool]]\nname = \"p{pool}\"\ndown_when = \"majority\"\n\
             check = {{ kind = \"tcp\", port = 9, interval = \"1h\", timeout = \"1s\", rise = {}, fall = {} }}\n",
            timing.rise,
            timing.fall
        )
        .unwrap();
        for member in 0..POOL_SIZE.min(endpoints - pool * POOL_SIZE) {
            let endpoint = pool * POOL_SIZE + member;
            writeln!(
                text,
                "[[pool.member]]\nname = \"m{member}\"\naddresses = [\"{}\"]",
                address(endpoint)
            )
            .unwrap();
        }
    }
    let path = dir.join(format!("sim-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_instance(path: PathBuf, token: &CancellationToken) -> Instance {
    let loaded = ConfigSource::File(path).load().unwrap();
    let (events, mut receiver) = mpsc::channel::<BuildEvent>(4096);
    let (health, _task) =
        gto::health::spawn(&loaded, None, None, Some(events), token.child_token());
    let cluster = loaded.config.cluster.clone().unwrap();
    let me = InstanceInfo::starting(&loaded, &[]);
    let fleet = Fleet::new(&cluster, health.clone(), me, loaded.config.admin.max_drain);
    fleet.run(token.child_token());
    let view = Arc::new(Mutex::new(View {
        down: HashSet::new(),
        expected: Arc::new(HashSet::new()),
        mismatches: 0,
        agreed_at: Some(Instant::now()),
    }));
    let seen = view.clone();
    tokio::spawn(async move {
        while let Some(event) = receiver.recv().await {
            if let Change::SetMemberUp { key, up } = event.change {
                seen.lock().unwrap().flip(key, up);
            }
            if let Some(done) = event.done {
                let _ = done.send(0);
            }
        }
    });
    Instance {
        view,
        fleet,
        health,
    }
}

/// The outcome of one scripted change: when every instance agreed.
struct Convergence {
    p50: Duration,
    p99: Duration,
    max: Duration,
    all: bool,
}

impl std::fmt::Display for Convergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.all {
            write!(
                f,
                "{:.1} / {:.1} / {:.1} s",
                self.p50.as_secs_f64(),
                self.p99.as_secs_f64(),
                self.max.as_secs_f64()
            )
        } else {
            write!(f, "not within {:.0} s", self.max.as_secs_f64())
        }
    }
}

/// When an instance's probes of one endpoint confirm a change that happened `unit` of an
/// interval before its next probe (uniform in 0..1), as the scheduler probes: the next
/// probe, then (going down) one a quarter interval later and the rest an interval apart,
/// or (coming up) an interval apart.
fn detection(timing: Timing, up: bool, unit: f64) -> Duration {
    let first = timing.interval.mul_f64(unit);
    if up {
        first + timing.interval * timing.rise.saturating_sub(1)
    } else if timing.fall >= 2 {
        first + timing.interval / 4 + timing.interval * (timing.fall - 2)
    } else {
        first
    }
}

/// Sets the script to `down`, hands each instance's monitor the probe outcomes that
/// confirm the change at the times its probes would (see [`detection`]; rise or fall
/// outcomes at once), and waits (at most `limit`) until every instance agrees.
async fn change(
    script: &Down,
    instances: &[Instance],
    down: &[usize],
    timing: Timing,
    limit: Duration,
) -> Convergence {
    let expected: Arc<HashSet<EndpointKey>> = Arc::new(down.iter().map(|&e| key(e)).collect());
    let was: HashSet<IpAddr> = script.0.load().iter().copied().collect();
    let now_down: HashSet<IpAddr> = down.iter().map(|&e| address(e)).collect();
    let changed: Vec<(EndpointKey, bool)> = (0..script.endpoints())
        .filter(|&e| was.contains(&address(e)) != now_down.contains(&address(e)))
        .map(|e| (key(e), !now_down.contains(&address(e))))
        .collect();
    let mut schedule: Vec<(Duration, usize, usize)> = Vec::new();
    for instance in 0..instances.len() {
        for (i, (_, up)) in changed.iter().enumerate() {
            schedule.push((detection(timing, *up, rand::random()), instance, i));
        }
    }
    schedule.sort_unstable();
    for instance in instances {
        instance.view.lock().unwrap().expect(expected.clone());
    }
    let started = Instant::now();
    let phases = std::env::var_os("FLEET_PHASES").is_some();
    let mut shown = Duration::ZERO;
    let cpu_before = cpu_of("/proc/self/stat");
    if phases {
        eprintln!("phase: {} endpoints change", changed.len());
    }
    script.0.store(Arc::new(now_down));
    let mut next = 0;
    loop {
        // Outcomes now due, one message per instance.
        let elapsed = started.elapsed();
        let mut due: Vec<Vec<(EndpointKey, bool, u32)>> = vec![Vec::new(); instances.len()];
        while let Some(&(at, instance, i)) = schedule.get(next)
            && at <= elapsed
        {
            let (key, up) = &changed[i];
            let count = if *up { timing.rise } else { timing.fall };
            due[instance].push((key.clone(), *up, count));
            next += 1;
        }
        for (instance, outcomes) in instances.iter().zip(due) {
            // Each instance's own delivery: a busy monitor delays its own probes'
            // outcomes, never another instance's (as probes on separate machines).
            if !outcomes.is_empty() {
                let health = instance.health.clone();
                tokio::spawn(async move { health.simulate_reports(outcomes).await });
            }
        }
        let agreed: Vec<Option<Instant>> = instances
            .iter()
            .map(|i| i.view.lock().unwrap().agreed_at)
            .collect();
        if phases && elapsed >= shown + Duration::from_millis(500) {
            shown = elapsed;
            let mut left: Vec<usize> = instances
                .iter()
                .map(|i| i.view.lock().unwrap().mismatches)
                .collect();
            left.sort_unstable();
            eprintln!(
                "  {:>5.1} s: {} of {} instances agree; endpoints left min / median / max {} / {} / {}",
                elapsed.as_secs_f64(),
                agreed.iter().filter(|a| a.is_some()).count(),
                instances.len(),
                left[0],
                left[left.len() / 2],
                left[left.len() - 1],
            );
        }
        let all = next == schedule.len() && agreed.iter().all(Option::is_some);
        if all || started.elapsed() > limit {
            let mut times: Vec<Duration> = agreed
                .iter()
                .map(|at| at.map_or(limit, |at| at.saturating_duration_since(started)))
                .collect();
            times.sort();
            let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            if phases {
                eprintln!(
                    "  converged: {:.1} CPU-seconds in {:.1} s",
                    cpu_of("/proc/self/stat") - cpu_before,
                    started.elapsed().as_secs_f64()
                );
            }
            return Convergence {
                p50: at(0.5),
                p99: at(0.99),
                max: at(1.0),
                all,
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Vote documents in the store.
async fn documents(etcd: &Etcd) -> usize {
    let mut client = etcd.client().await;
    let count = client
        .get(
            "/gto/sim/votes/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    usize::try_from(count).unwrap()
}

/// Vote documents written since `revision`.
async fn votes_written_since(etcd: &Etcd, revision: i64) -> usize {
    let mut client = etcd.client().await;
    client
        .get(
            "/gto/sim/votes/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_min_mod_revision(revision + 1),
            ),
        )
        .await
        .unwrap()
        .kvs()
        .len()
}

async fn revision(etcd: &Etcd) -> i64 {
    let mut client = etcd.client().await;
    client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// One row of the report.
struct Row {
    instances: usize,
    endpoints: usize,
    steady: Rates,
    steady_votes: usize,
    outage10: (Convergence, Rates),
    outage100: (Convergence, Rates),
    flapping: Rates,
    db: (f64, f64),
}

async fn scenario(instances: usize, endpoints: usize, timing: Timing, script: &Down) -> Row {
    script.0.store(Arc::new(HashSet::new()));
    script
        .1
        .store(endpoints, std::sync::atomic::Ordering::Relaxed);
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    let token = CancellationToken::new();
    let mut fleet = Vec::new();
    // One at a time, as a fleet is rolled out: each instance's first probes say up, and
    // it is connected with every pool's document written before the next starts.
    let pools = endpoints.div_ceil(POOL_SIZE);
    let mut started = Instant::now();
    for id in 0..instances {
        let path = config(dir.path(), &etcd.url(), id, endpoints, timing);
        let instance = start_instance(path, &token).await;
        let first: Vec<(EndpointKey, bool, u32)> = (0..endpoints)
            .map(|e| (key(e), true, timing.rise))
            .collect();
        instance.health.simulate_reports(first).await;
        fleet.push(instance);
        started = Instant::now();
        loop {
            let count = documents(&etcd).await;
            if count == (id + 1) * pools && fleet.iter().all(|i| i.fleet.is_connected()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "instance {id}: {count} of {} vote documents after 60 s",
                (id + 1) * pools
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Past the last one's start grace (votes count) and one more round of probes.
    let grace = gto::health::START_GRACE.saturating_sub(started.elapsed());
    tokio::time::sleep(grace + timing.interval * 2).await;

    // Steady state.
    let from = revision(&etcd).await;
    let a = counters(&etcd).await;
    tokio::time::sleep(timing.steady).await;
    let b = counters(&etcd).await;
    let steady_votes = votes_written_since(&etcd, from).await;
    let steady = rates(a, b);

    let limit = timing.bound() * 4;
    let settle = timing.interval * 2;
    let tenth: Vec<usize> = (0..endpoints).filter(|e| e % 10 == 0).collect();
    let all: Vec<usize> = (0..endpoints).collect();
    let outage = |down: Vec<usize>| {
        let fleet = &fleet;
        let etcd = &etcd;
        async move {
            let a = counters(etcd).await;
            let converged = change(script, fleet, &down, timing, limit).await;
            tokio::time::sleep(settle).await;
            let b = counters(etcd).await;
            let rates = rates(a, b);
            change(script, fleet, &[], timing, limit).await;
            tokio::time::sleep(settle).await;
            (converged, rates)
        }
    };
    let outage10 = outage(tenth).await;
    let outage100 = outage(all).await;

    // 1 % flapping: down, and up again once every instance saw it, for a while.
    let flappers: Vec<usize> = (0..endpoints).filter(|e| e % 100 == 7).collect();
    let a = counters(&etcd).await;
    let flapping_until = Instant::now() + timing.flapping;
    while Instant::now() < flapping_until {
        change(script, &fleet, &flappers, timing, limit).await;
        change(script, &fleet, &[], timing, limit).await;
    }
    let b = counters(&etcd).await;
    let flapping = rates(a, b);

    // The db as the run left it, then what a compaction (etcd's auto-compaction, as the
    // README recommends) leaves in use: the live keys.
    let before = metric(&etcd.metrics().await, "etcd_mvcc_db_total_size_in_bytes");
    let mut client = etcd.client().await;
    let current = revision(&etcd).await;
    client
        .compact(
            current,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    let db = (
        before,
        metric(
            &etcd.metrics().await,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
        ),
    );
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Row {
        instances,
        endpoints,
        steady,
        steady_votes,
        outage10,
        outage100,
        flapping,
        db,
    }
}

fn report(rows: &[Row], timing: Timing) -> String {
    let mut text = format!(
        "interval {:?}, fall {}, rise {}: bound interval x fall + 2 s = {:?}\n\n\
         | instances x endpoints | steady: writes/s (votes written) | 10 % outage: converged p50 / p99 / max, writes/s, keys, KiB | 100 % outage: same | 1 % flapping: writes/s | watch events per instance (100 % outage) | db size / in use after compaction | CPU per instance steady, 100 % outage (etcd) |\n\
         |---|---|---|---|---|---|---|---|\n",
        timing.interval,
        timing.fall,
        timing.rise,
        timing.bound()
    );
    for row in rows {
        let per = |r: &Rates| r.writes / r.secs;
        let (c10, r10) = &row.outage10;
        let (c100, r100) = &row.outage100;
        let n = row.instances as f64;
        writeln!(
            text,
            "| {} x {} | {:.1} ({}) | {c10}, {:.0}, {:.0}, {:.0} | {c100}, {:.0}, {:.0}, {:.0} | {:.1} | {:.0} | {:.1} / {:.1} MiB | {:.1} %, {:.1} % ({:.0} %, {:.0} %) |",
            row.instances,
            row.endpoints,
            per(&row.steady),
            row.steady_votes,
            per(r10),
            r10.keys,
            r10.bytes / 1024.0,
            per(r100),
            r100.keys,
            r100.bytes / 1024.0,
            per(&row.flapping),
            r100.events / n,
            row.db.0 / 1_048_576.0,
            row.db.1 / 1_048_576.0,
            100.0 * row.steady.cpu / row.steady.secs / n,
            100.0 * r100.cpu / r100.secs / n,
            100.0 * row.steady.etcd_cpu / row.steady.secs,
            100.0 * r100.etcd_cpu / r100.secs,
        )
        .unwrap();
    }
    text
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // nextest's listing: one test, the small run.
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            print_test_list();
        }
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    // The instances' logs, when asked for (RUST_LOG=warn).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let script: &'static Down = Box::leak(Box::new(Down(
        ArcSwap::from_pointee(HashSet::new()),
        std::sync::atomic::AtomicUsize::new(0),
    )));
    assert!(gto::health::simulate::install(script));
    let (sizes, counts, timing) = if benching {
        (
            list("FLEET_SIZES", &[3, 10, 30]),
            list("FLEET_ENDPOINTS", &[1_000, 10_000]),
            Timing {
                interval: Duration::from_secs(2),
                fall: 3,
                rise: 2,
                steady: Duration::from_secs(20),
                flapping: Duration::from_secs(24),
            },
        )
    } else {
        (
            vec![3],
            vec![200],
            Timing {
                interval: Duration::from_millis(500),
                fall: 2,
                rise: 1,
                steady: Duration::from_secs(3),
                flapping: Duration::from_secs(3),
            },
        )
    };
    let mut rows = Vec::new();
    for &endpoints in &counts {
        for &instances in &sizes {
            let row = runtime.block_on(scenario(instances, endpoints, timing, script));
            eprintln!("{}", report(std::slice::from_ref(&row), timing));
            rows.push(row);
        }
    }
    eprintln!("{}", report(&rows, timing));
    if !benching {
        for row in &rows {
            assert_eq!(row.steady_votes, 0, "votes written in steady state");
            for (what, (converged, _)) in [("10 %", &row.outage10), ("100 %", &row.outage100)] {
                assert!(
                    converged.all && converged.max <= timing.bound(),
                    "{what} outage: {converged} (bound {:?})",
                    timing.bound()
                );
            }
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_test_list() {
    println!("fleet::simulated_fleet_converges_and_writes_nothing_when_steady: test");
}
