//! A Kafka-protocol broker for tests, and a producer.
//!
//! The broker: `WEIR_TEST_KAFKA` (`host:port`, as `.ci/run` sets it), shared
//! by the tests (each uses its own topics); or a private `tansu` broker
//! started here from `WEIR_TANSU` (a path, as `.ci/run` sets it) or `tansu`
//! on PATH, in memory, on a free loopback port, stopped when the test is
//! done. A test that must restart or cut off its broker always starts its
//! own. Without a broker, each test prints a skip line and passes, unless
//! `WEIR_REQUIRE_KAFKA` is set (CI), so `cargo test --workspace` works on a
//! fresh laptop and CI cannot skip them silently.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn tansu() -> Option<PathBuf> {
    std::env::var_os("WEIR_TANSU")
        .map(PathBuf::from)
        .or_else(|| on_path("tansu"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A broker the test talks to.
pub struct Broker {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    port: u16,
    advertised: Option<u16>,
    /// Where it keeps its topics (`memory://tansu/`, or `s3://bucket/`), and
    /// the environment that storage needs.
    storage: String,
    storage_env: Vec<(String, String)>,
    binary: Option<PathBuf>,
    /// More arguments for `tansu broker` (`--authentication`).
    args: Vec<String>,
    /// Where the broker runs (a `sqlite://` store is a path from there).
    cwd: Option<PathBuf>,
    /// The TLS the test's own clients use (see [`Broker::tls_front`]).
    client_tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// The login the test's own clients use (see [`Broker::with_user`]).
    client_sasl: Option<rskafka::client::SaslConfig>,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.cwd {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn no_broker(why: &str) -> Option<Broker> {
    let note = format!(
        "{why} (run .ci/run, or `cargo install tansu --version 0.6.0 --features dynostore,libsql` and set WEIR_TANSU)"
    );
    if std::env::var_os("WEIR_REQUIRE_KAFKA").is_some() {
        panic!("WEIR_REQUIRE_KAFKA is set, but {note}");
    }
    loud(&format!("SKIPPED: Kafka tests not run: {note}"));
    None
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Broker {
    /// The shared broker, or a private one; `None` (after a note) when there
    /// is none and none is required.
    pub fn any() -> Option<Broker> {
        if let Ok(addr) = std::env::var("WEIR_TEST_KAFKA") {
            return Some(Self::external(&addr));
        }
        Self::private()
    }

    /// A client's view of a broker running elsewhere (at `addr`).
    pub fn external(addr: &str) -> Broker {
        Broker {
            addr: addr.to_string(),
            child: None,
            port: 0,
            advertised: None,
            storage: String::new(),
            storage_env: Vec::new(),
            binary: None,
            args: Vec::new(),
            client_tls: None,
            client_sasl: None,
            cwd: None,
            runtime: runtime(),
        }
    }

    /// A broker of this test's own (which it may stop and start).
    pub fn private() -> Option<Broker> {
        Self::private_advertising(None)
    }

    /// A private broker of `binary` on a free loopback port, keeping its
    /// topics in `storage`, not started yet.
    fn unstarted(binary: PathBuf, storage: &str) -> Broker {
        let port = free_port();
        Broker {
            addr: format!("127.0.0.1:{port}"),
            child: None,
            port,
            advertised: None,
            storage: storage.to_string(),
            storage_env: Vec::new(),
            binary: Some(binary),
            args: Vec::new(),
            client_tls: None,
            client_sasl: None,
            cwd: None,
            runtime: runtime(),
        }
    }

    /// A broker of this test's own that tells clients to connect to
    /// `advertised` (a [`Proxy`]'s port) instead of its own port.
    pub fn private_advertising(advertised: Option<u16>) -> Option<Broker> {
        let Some(binary) = tansu() else {
            return no_broker("neither WEIR_TEST_KAFKA nor WEIR_TANSU is set, and tansu is not on PATH");
        };
        let mut b = Broker::unstarted(binary, "memory://tansu/");
        b.advertised = advertised;
        b.start();
        Some(b)
    }

    /// A broker of this test's own, keeping its topics and users in a
    /// SQLite file (tansu's `libsql` storage), that refuses clients who do
    /// not log in, with one SCRAM-SHA-256 user: `user`, `password`. The
    /// test's own clients log in as that user. `None` (after a note) when
    /// the tansu at hand was built without `libsql`.
    pub fn with_user(user: &str, password: &str) -> Option<Broker> {
        let Some(binary) = tansu() else {
            return no_broker("neither WEIR_TEST_KAFKA nor WEIR_TANSU is set, and tansu is not on PATH");
        };
        let engines = Command::new(&binary).arg("--help").output().ok()?;
        if !String::from_utf8_lossy(&engines.stdout).contains("libsql") {
            return no_broker("a broker with users needs tansu built with the `libsql` feature");
        }
        let dir = std::env::temp_dir().join(format!("weir-tansu-{}-{:x}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Broker::unstarted(binary.clone(), "sqlite://tansu.db");
        b.cwd = Some(dir);
        // Users are made through the broker (AlterUserScramCredentials),
        // which an authenticating broker only takes from a logged-in
        // client: make the user first, then restart it authenticating.
        b.start();
        let made = Command::new(&binary)
            .args(["user", "create", "--broker", &format!("tcp://{}", b.addr)])
            .args(["--mechanism", "scram256", user, password])
            .output()
            .unwrap();
        assert!(made.status.success(), "tansu user create: {made:?}");
        b.stop();
        b.args = vec!["--authentication".into()];
        b.client_sasl = Some(rskafka::client::SaslConfig::ScramSha256(
            rskafka::client::Credentials::new(user.to_string(), password.to_string()),
        ));
        b.start();
        Some(b)
    }

    /// A broker of this test's own that keeps its topics in a new bucket
    /// of the S3 server the tests use (`WEIR_TEST_S3_ENDPOINT`), so that it
    /// can be stopped and started again with them.
    pub fn private_on_s3() -> Option<Broker> {
        let Ok(endpoint) = std::env::var("WEIR_TEST_S3_ENDPOINT") else {
            return no_broker("a broker restart needs WEIR_TEST_S3_ENDPOINT (an S3 server for its storage)");
        };
        let Some(binary) = tansu() else {
            return no_broker("neither WEIR_TANSU is set nor tansu on PATH");
        };
        let host = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let bucket = format!("tansu-{}-{:x}", std::process::id(), free_port());
        let mut conn = TcpStream::connect(&host).expect("connect to the S3 server");
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
        assert!(
            answer.lines().next().unwrap_or("").contains(" 200"),
            "creating bucket {bucket}: {answer}"
        );
        let mut b = Broker::unstarted(binary, &format!("s3://{bucket}/"));
        b.storage_env = vec![
            ("AWS_ENDPOINT".into(), format!("http://{host}")),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ];
        b.start();
        Some(b)
    }

    /// Starts the private broker (in memory, a restart loses its topics;
    /// on S3 it keeps them).
    pub fn start(&mut self) {
        let binary = self.binary.clone().expect("a private broker");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                &self.storage,
            ])
            .args(&self.args)
            .current_dir(self.cwd.clone().unwrap_or_else(std::env::temp_dir))
            .envs(self.storage_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu is not listening on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    pub fn client(&self) -> Client {
        let addr = self.addr.clone();
        let tls = self.client_tls.clone();
        let sasl = self.client_sasl.clone();
        self.block_on(async move {
            let mut builder = ClientBuilder::new(vec![addr]);
            if let Some(tls) = tls {
                builder = builder.tls_config(tls);
            }
            if let Some(sasl) = sasl {
                builder = builder.sasl_config(sasl);
            }
            builder.build().await.expect("a client of the test broker")
        })
    }

    /// Serves TLS on `port` in front of this broker (which must advertise
    /// `port`), with the test certificate of `tests/fixtures/tls`
    /// (`broker.pem`, for 127.0.0.1 and localhost, signed by `ca.pem`), and
    /// passes the bytes on to the broker in the clear. tansu 0.6 takes
    /// `--cert` but still serves plain TCP, so TLS ends here. `addr` becomes
    /// the front's, and the test's own clients trust `ca.pem` too.
    pub fn tls_front(&mut self, port: u16) {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tls_fixtures();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("broker.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("broker.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.client_tls = Some(Arc::new(client));
        // From now on the test's own clients come in through the front too.
        self.addr = format!("127.0.0.1:{port}");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let upstream = format!("127.0.0.1:{}", self.port);
        let listener = self
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("the TLS front's port");
        self.runtime.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A client that fails the handshake (say, one that
                    // does not trust the CA) is dropped, as a broker would.
                    let Ok(mut tls) = acceptor.accept(conn).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    }

    /// Creates a topic; waits until every partition answers.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let client = self.client();
        self.block_on(async {
            client
                .controller_client()
                .unwrap()
                .create_topic(topic, partitions, 1, 5_000)
                .await
                .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
            for p in 0..partitions {
                client
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await
                    .unwrap();
            }
        });
    }

    /// Deletes a topic.
    pub fn delete_topic(&self, topic: &str) {
        let client = self.client();
        self.block_on(async {
            client
                .controller_client()
                .unwrap()
                .delete_topic(topic, 5_000)
                .await
                .unwrap_or_else(|e| panic!("deleting topic {topic}: {e}"));
        });
    }

    /// Produces records to a partition, in order, in requests (record
    /// batches) of up to 500 records.
    pub fn produce(&self, topic: &str, partition: i32, records: Vec<Record>) {
        self.produce_in(topic, partition, records, 500)
    }

    /// Produces records to a partition, in order, `per_batch` to a request
    /// (and so to a record batch).
    pub fn produce_in(&self, topic: &str, partition: i32, records: Vec<Record>, per_batch: usize) {
        let client = self.client();
        self.block_on(async {
            let pc = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<Record> = records.by_ref().take(per_batch).collect();
                pc.produce(chunk, Compression::NoCompression).await.unwrap();
            }
        });
    }

    /// Every record of a topic, partition by partition: (partition, offset,
    /// key, value, headers), keys and values as text.
    pub fn read_all(&self, topic: &str) -> Vec<Consumed> {
        let client = self.client();
        self.block_on(async {
            let topics = client.list_topics().await.unwrap();
            let partitions = topics
                .iter()
                .find(|t| t.name == topic)
                .unwrap_or_else(|| panic!("no topic {topic}"))
                .partitions
                .clone();
            let mut out = Vec::new();
            for p in partitions {
                let pc = client
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await
                    .unwrap();
                let mut at = 0;
                loop {
                    let (records, high) = pc.fetch_records(at, 1..10_000_000, 100).await.unwrap();
                    for r in &records {
                        let text =
                            |b: &Option<Vec<u8>>| b.as_ref().map(|v| String::from_utf8(v.clone()).unwrap());
                        out.push(Consumed {
                            partition: p,
                            offset: r.offset,
                            key: text(&r.record.key),
                            value: text(&r.record.value),
                            headers: r
                                .record
                                .headers
                                .iter()
                                .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap()))
                                .collect(),
                        });
                        at = r.offset + 1;
                    }
                    if records.is_empty() || at >= high {
                        break;
                    }
                }
            }
            out
        })
    }

    /// The high watermark of a partition.
    pub fn end_offset(&self, topic: &str, partition: i32) -> i64 {
        let client = self.client();
        self.block_on(async {
            client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .unwrap()
                .get_offset(rskafka::client::partition::OffsetAt::Latest)
                .await
                .unwrap()
        })
    }
}

/// A record read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl Consumed {
    /// The record's `weir.epoch` and `weir.seq` headers.
    pub fn position(&self) -> (u64, u64) {
        let h = |k: &str| -> u64 {
            self.headers
                .get(k)
                .unwrap_or_else(|| panic!("no {k} header: {self:?}"))
                .parse()
                .unwrap()
        };
        (h("weir.epoch"), h("weir.seq"))
    }
}

/// The test TLS certificates: `ca.pem`, and `broker.pem`/`broker.key`
/// (made once with openssl, valid until 2126; for tests only).
pub fn tls_fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls")
}

/// A record with a value, a timestamp, and optionally a key and headers.
pub fn record(value: &str, ts_ms: i64) -> Record {
    Record {
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: BTreeMap::new(),
        timestamp: chrono::DateTime::from_timestamp_millis(ts_ms).unwrap(),
    }
}

/// A TCP proxy in front of a broker, which a test can take down (its port
/// closed and every connection cut, as when a broker dies) and bring back.
/// The broker must advertise the proxy's address.
pub struct Proxy {
    pub port: u16,
    upstream: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on `port` to `upstream`.
    pub fn on(port: u16, upstream: &str) -> Proxy {
        let mut p = Proxy {
            port,
            upstream: upstream.to_string(),
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            listener: None,
        };
        p.bring_up();
        p
    }

    pub fn bring_up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("the proxy's port");
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let up = Arc::clone(&self.up);
        let conns = Arc::clone(&self.conns);
        let upstream = self.upstream.clone();
        self.listener = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        drop(c);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // Dropping the listener closes the port.
        }));
    }

    pub fn take_down(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(l) = self.listener.take() {
            l.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.take_down();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Bids as JSON records: bid `i` goes to partition `i % partitions`, its
/// record timestamp its event time.
pub fn produce_bids(broker: &Broker, topic: &str, partitions: i32, bids: &[super::Bid]) {
    let mut by_partition: BTreeMap<i32, Vec<rskafka::record::Record>> = BTreeMap::new();
    for (i, b) in bids.iter().enumerate() {
        let json = format!(
            "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}\"}}",
            b.auction,
            b.price,
            super::iso(b.ts)
        );
        by_partition
            .entry(i as i32 % partitions)
            .or_default()
            .push(record(&json, b.ts));
    }
    for (p, records) in by_partition {
        broker.produce(topic, p, records);
    }
}

pub fn kafka_job(broker: &str, topic: &str, extra: &str) -> String {
    format!(
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{broker}',
        'format' = 'json'{extra});
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
"
    )
}

/// A Kafka-protocol proxy in front of a broker (which must advertise the
/// gate's port) that makes the broker look as it would after changes tansu
/// 0.6 cannot make:
/// - a topic given more partitions ([`PartitionGate::show`]): Metadata
///   answers leave out its higher partitions until the test shows them
///   (tansu has no CreatePartitions);
/// - records deleted by retention ([`PartitionGate::delete_before`]): the
///   earliest offset is answered as the new log start, and a fetch below it
///   gets OFFSET_OUT_OF_RANGE, as from Kafka (tansu's `delete_records` is
///   not built).
///
/// Every other request and answer passes as it is.
pub struct PartitionGate {
    pub port: u16,
    rules: Arc<Mutex<GateRules>>,
}

#[derive(Default)]
struct GateRules {
    /// topic -> how many of its partitions (0..n) Metadata answers show.
    shown: BTreeMap<String, i32>,
    /// (topic, partition) -> the log start retention left.
    floors: BTreeMap<(String, i32), i64>,
}

impl PartitionGate {
    pub fn on(port: u16, upstream: &str) -> PartitionGate {
        let rules: Arc<Mutex<GateRules>> = Arc::default();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the gate's port");
        let upstream = upstream.to_string();
        let gate_rules = Arc::clone(&rules);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                // correlation id -> (api key, api version) of requests
                // waiting for their answer on this connection.
                let pending: Arc<Mutex<BTreeMap<i32, (i16, i16)>>> = Arc::default();
                // Both directions answer the client: whole frames, one at a time.
                let to_client = Arc::new(Mutex::new(client.try_clone().unwrap()));
                let (mut c_in, mut s_out) = (client, server.try_clone().unwrap());
                let requests = Arc::clone(&pending);
                let (rules, answers) = (Arc::clone(&gate_rules), Arc::clone(&to_client));
                std::thread::spawn(move || {
                    while let Some(frame) = read_frame(&mut c_in) {
                        if frame.len() < 8 {
                            break;
                        }
                        let key = i16::from_be_bytes([frame[0], frame[1]]);
                        let version = i16::from_be_bytes([frame[2], frame[3]]);
                        let corr = i32::from_be_bytes(frame[4..8].try_into().unwrap());
                        if let Some(body) = answer_here(&frame, key, version, &rules.lock().unwrap()) {
                            let mut answer = corr.to_be_bytes().to_vec();
                            answer.extend_from_slice(&body);
                            if write_frame(&mut answers.lock().unwrap(), &answer).is_err() {
                                break;
                            }
                            continue;
                        }
                        requests.lock().unwrap().insert(corr, (key, version));
                        if write_frame(&mut s_out, &frame).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let mut s_in = server;
                let rules = Arc::clone(&gate_rules);
                std::thread::spawn(move || {
                    while let Some(mut frame) = read_frame(&mut s_in) {
                        if frame.len() >= 4 {
                            let corr = i32::from_be_bytes(frame[0..4].try_into().unwrap());
                            let asked = pending.lock().unwrap().remove(&corr);
                            // Metadata (key 3) up to v4, the versions rskafka 0.6 speaks.
                            if let Some((3, version @ 0..=4)) = asked {
                                let body =
                                    hide_partitions(&frame[4..], version, &rules.lock().unwrap().shown);
                                frame.truncate(4);
                                frame.extend_from_slice(&body);
                            }
                        }
                        if write_frame(&mut to_client.lock().unwrap(), &frame).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.lock().unwrap().shutdown(Shutdown::Write);
                });
            }
        });
        PartitionGate { port, rules }
    }

    /// Metadata answers show partitions `0..n` of `topic` (all, once `n`
    /// is as many as it has).
    pub fn show(&self, topic: &str, n: i32) {
        self.rules.lock().unwrap().shown.insert(topic.to_string(), n);
    }

    /// The partition looks as if retention had deleted its records before
    /// `offset` (a record-batch boundary, so that fetches from it work on
    /// tansu).
    pub fn delete_before(&self, topic: &str, partition: i32, offset: i64) {
        self.rules
            .lock()
            .unwrap()
            .floors
            .insert((topic.to_string(), partition), offset);
    }
}

/// A reading cursor over a Kafka message.
struct Cur<'a>(&'a [u8], usize);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        s
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    /// A (nullable) string; its text.
    fn string(&mut self) -> String {
        let n = self.i16();
        if n < 0 {
            return String::new();
        }
        String::from_utf8_lossy(self.take(n as usize)).into_owned()
    }
    fn i32s(&mut self) {
        let n = self.i32().max(0) as usize;
        self.take(4 * n);
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The gate's own answer's body to a request (a whole frame, header v1)
/// that touches deleted records: a Fetch (key 1, v4, the one rskafka 0.6
/// sends) of one partition below its floor, or a ListOffsets (key 2,
/// v1-v3) for one partition's earliest offset. `None`: pass it on.
fn answer_here(frame: &[u8], key: i16, version: i16, rules: &GateRules) -> Option<Vec<u8>> {
    if rules.floors.is_empty() || !matches!((key, version), (1, 4) | (2, 1..=3)) {
        return None;
    }
    let mut c = Cur(frame, 8);
    c.string(); // client id
    c.i32(); // replica id
    if key == 1 {
        c.i32(); // max wait
        c.i32(); // min bytes
        c.i32(); // max bytes
        c.take(1); // isolation level
    } else if version >= 2 {
        c.take(1); // isolation level
    }
    if c.i32() != 1 {
        return None;
    }
    let topic = c.string();
    if c.i32() != 1 {
        return None;
    }
    let partition = c.i32();
    let at = c.i64(); // fetch: the offset; list offsets: the timestamp
    let &floor = rules.floors.get(&(topic.clone(), partition))?;
    let mut out = Vec::new();
    if key == 1 {
        if at >= floor {
            return None;
        }
        out.extend_from_slice(&0i32.to_be_bytes()); // throttle
        out.extend_from_slice(&1i32.to_be_bytes());
        put_string(&mut out, &topic);
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&1i16.to_be_bytes()); // OFFSET_OUT_OF_RANGE
        out.extend_from_slice(&(-1i64).to_be_bytes()); // high watermark
        out.extend_from_slice(&(-1i64).to_be_bytes()); // last stable offset
        out.extend_from_slice(&(-1i32).to_be_bytes()); // aborted transactions: null
        out.extend_from_slice(&0i32.to_be_bytes()); // records: none
    } else {
        if at != -2 {
            return None; // not the earliest offset
        }
        if version >= 2 {
            out.extend_from_slice(&0i32.to_be_bytes()); // throttle
        }
        out.extend_from_slice(&1i32.to_be_bytes());
        put_string(&mut out, &topic);
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes()); // no error
        out.extend_from_slice(&(-1i64).to_be_bytes()); // timestamp
        out.extend_from_slice(&floor.to_be_bytes());
    }
    Some(out)
}

fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut size = [0u8; 4];
    from.read_exact(&mut size).ok()?;
    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    from.read_exact(&mut frame).ok()?;
    Some(frame)
}

fn write_frame(to: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    to.write_all(&(frame.len() as i32).to_be_bytes())?;
    to.write_all(frame)
}

/// A Metadata answer's body (v0-v4, after the correlation id) with the
/// partitions of `shown`'s topics at or beyond their count left out.
fn hide_partitions(body: &[u8], version: i16, shown: &BTreeMap<String, i32>) -> Vec<u8> {
    let mut c = Cur(body, 0);
    if version >= 3 {
        c.i32(); // throttle time
    }
    for _ in 0..c.i32().max(0) {
        c.i32(); // node id
        c.string(); // host
        c.i32(); // port
        if version >= 1 {
            c.string(); // rack
        }
    }
    if version >= 2 {
        c.string(); // cluster id
    }
    if version >= 1 {
        c.i32(); // controller id
    }
    let mut out = body[..c.1].to_vec();
    let topics = c.i32();
    out.extend_from_slice(&topics.to_be_bytes());
    for _ in 0..topics.max(0) {
        let from = c.1;
        c.i16(); // error
        let name = c.string();
        if version >= 1 {
            c.take(1); // is internal
        }
        out.extend_from_slice(&body[from..c.1]);
        let mut kept = Vec::new();
        let mut count = 0i32;
        for _ in 0..c.i32().max(0) {
            let from = c.1;
            c.i16(); // error
            let index = c.i32();
            c.i32(); // leader
            c.i32s(); // replicas
            c.i32s(); // in-sync replicas
            if shown.get(&name).is_none_or(|&n| index < n) {
                kept.extend_from_slice(&body[from..c.1]);
                count += 1;
            }
        }
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&kept);
    }
    out.extend_from_slice(&body[c.1..]);
    out
}
