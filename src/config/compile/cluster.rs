//! `[cluster]`: the fleet's etcd endpoints, TLS, credentials and this instance's identity.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawCluster, RawClusterTls, RawConfig};
use crate::config::{ClusterSettings, ClusterTls, Secret};

/// Default `[cluster] lease_ttl`.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

pub(super) fn compile_cluster(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<ClusterSettings> {
    let cluster = raw.cluster.as_ref()?;
    let RawCluster {
        etcd,
        name,
        instance,
        region,
        lease_ttl,
        tls,
        user,
        password_file,
    } = cluster.get_ref();
    let endpoints = compile_endpoints(cluster, etcd.as_ref(), errors);
    let valid_id = |text: &str| {
        !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    let name = match name {
        None => "default".to_string(),
        Some(text) if valid_id(text.get_ref()) => text.get_ref().clone(),
        Some(text) => {
            errors.at(
                text,
                "cluster.name",
                "letters, digits, '-', '_' and '.' only, at most 63",
            );
            String::new()
        }
    };
    let instance = match instance {
        Some(text) if valid_id(text.get_ref()) => text.get_ref().clone(),
        Some(text) => {
            errors.at(
                text,
                "cluster.instance",
                "letters, digits, '-', '_' and '.' only, at most 63",
            );
            String::new()
        }
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| valid_id(h))
            .unwrap_or_else(|| "gto".to_string()),
    };
    let lease_ttl = errors.setting(
        lease_ttl.as_ref(),
        "cluster.lease_ttl",
        DEFAULT_LEASE_TTL,
        |v| {
            parse_duration(v)
                .filter(|d| *d >= Duration::from_secs(2) && *d <= Duration::from_secs(300))
        },
        "not a duration from 2s to 300s (e.g. \"10s\")",
    );
    let tls = tls.as_ref().map(|tls| compile_tls(tls, base_dir, errors));
    if tls.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
        errors.at(
            cluster,
            "cluster.tls",
            "tls is set but an endpoint is http://; use https:// endpoints",
        );
    }
    let auth = match (user, password_file) {
        (Some(user), Some(file)) => errors
            .read_file(base_dir, file, "cluster.password_file")
            .map(|p| (user.get_ref().clone(), Secret::new(p.trim().to_string()))),
        (None, None) => None,
        _ => {
            errors.at(
                cluster,
                "cluster.user",
                "user and password_file go together",
            );
            None
        }
    };
    let region = region.as_ref().map(|r| r.get_ref().clone());
    Some(ClusterSettings {
        endpoints,
        name,
        instance,
        region,
        lease_ttl,
        tls,
        auth,
    })
}

/// `cluster.etcd`: at least one endpoint, each http:// or https:// host:port.
fn compile_endpoints(
    cluster: &Spanned<RawCluster>,
    etcd: Option<&Spanned<Vec<String>>>,
    errors: &mut Collector<'_>,
) -> Vec<String> {
    let mut endpoints = Vec::new();
    match etcd {
        None => errors.at(
            cluster,
            "cluster.etcd",
            "missing: the etcd endpoints, e.g. [\"http://127.0.0.1:2379\"]",
        ),
        Some(list) if list.get_ref().is_empty() => {
            errors.at(list, "cluster.etcd", "needs at least one endpoint");
        }
        Some(list) => {
            for endpoint in list.get_ref() {
                let ok = ["http://", "https://"].iter().any(|scheme| {
                    endpoint
                        .strip_prefix(scheme)
                        .is_some_and(|rest| rest.contains(':') && !rest.contains('/'))
                });
                if ok {
                    endpoints.push(endpoint.clone());
                } else {
                    errors.at(
                        list,
                        "cluster.etcd",
                        format!("{endpoint:?} is not http://host:port or https://host:port"),
                    );
                }
            }
        }
    }
    endpoints
}

/// `cluster.tls`: the CA to trust, and a client certificate with its key (both or none).
fn compile_tls(
    tls: &Spanned<RawClusterTls>,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> ClusterTls {
    let RawClusterTls {
        ca_file,
        cert_file,
        key_file,
    } = tls.get_ref();
    let ca = ca_file
        .as_ref()
        .and_then(|f| errors.read_file(base_dir, f, "cluster.tls.ca_file"));
    let identity = match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            let cert = errors.read_file(base_dir, cert, "cluster.tls.cert_file");
            let key = errors.read_file(base_dir, key, "cluster.tls.key_file");
            cert.zip(key).map(|(c, k)| (c, Secret::new(k)))
        }
        (None, None) => None,
        _ => {
            errors.at(tls, "cluster.tls", "cert_file and key_file go together");
            None
        }
    };
    ClusterTls { ca, identity }
}
