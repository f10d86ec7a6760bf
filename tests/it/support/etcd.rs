//! A real etcd (the Debian `etcd-server` package, installed by `tests/run`) on loopback
//! ports with its own data directory, ended by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::free_port;

/// An etcd server on loopback, ended (by its PID) when dropped.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    dir: PathBuf,
    _temp: tempfile::TempDir,
    tls: Option<Tls>,
}

/// Certificates for etcd over TLS, made by the test.
#[derive(Clone)]
pub struct Tls {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

fn etcd_bin() -> &'static str {
    for path in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("etcd is not installed: `tests/run` installs it (apt-get install -y etcd-server)");
}

impl Etcd {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(tls: Option<Tls>) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut etcd = Etcd {
            child: None,
            port: free_port(),
            peer_port: free_port(),
            dir: temp.path().to_path_buf(),
            _temp: temp,
            tls,
        };
        etcd.run().await;
        etcd
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same ports and data, and waits until it serves.
    pub async fn run(&mut self) {
        let url = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd_bin());
        command
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            for (name, text) in [
                ("ca.pem", &tls.ca),
                ("server.pem", &tls.server_cert),
                ("server.key", &tls.server_key),
            ] {
                std::fs::write(self.dir.join(name), text).unwrap();
            }
            command
                .arg(format!(
                    "--trusted-ca-file={}",
                    self.dir.join("ca.pem").display()
                ))
                .arg(format!(
                    "--cert-file={}",
                    self.dir.join("server.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    self.dir.join("server.key").display()
                ))
                .arg("--client-cert-auth");
        }
        self.child = Some(command.spawn().unwrap());
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "etcd did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.tls.is_none() {
            // Serving, not just listening: a put must succeed.
            loop {
                if let Ok(mut client) = etcd_client::Client::connect([url.as_str()], None).await
                    && client.put("/probe", "1", None).await.is_ok()
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "etcd not ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Kills etcd (SIGKILL, by its PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
