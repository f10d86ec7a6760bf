//! Stage two of config parsing: raw values become validated types, and every problem is
//! collected with its path and line.
//!
//! Cross-references (a service's pool, a fallback pool) are resolved to indices here, so
//! nothing downstream looks names up again. The compiled [`Config`] is never mutated.

mod admin;

pub(crate) use admin::DEFAULT_ADMIN_LISTEN;
mod cluster;
mod dnstap;
pub(crate) mod latency;
mod pools;
mod server;
mod services;
mod zones;

use std::path::Path;

use self::admin::{compile_admin, compile_webhooks};
use self::cluster::compile_cluster;
use self::pools::compile_pools;
use self::server::{check_listeners, compile_health, compile_rrl, compile_server};
use self::services::{check_preferences, compile_geo, compile_services};
use self::zones::compile_zones;
use super::Config;
use super::located::Collector;
pub(crate) use super::located::line_of;
use super::raw::RawConfig;

/// Compiles the raw document. Relative zone file paths are taken from `base_dir`.
/// The result holds every item that compiled, so later checks (zone files, names) can
/// still run and report their problems in the same pass; it is only used when `errors`
/// stays empty.
pub(crate) fn compile(raw: RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> Config {
    let server = compile_server(&raw, base_dir, errors);
    let admin = compile_admin(&raw, base_dir, errors);
    check_listeners(&raw, &server, &admin, errors);
    let rrl = compile_rrl(&raw, errors);
    let geo = compile_geo(&raw, base_dir, errors);
    let zones = compile_zones(&raw, base_dir, errors);
    let pools = compile_pools(&raw.pool, base_dir, errors);
    let mut services = compile_services(&raw.service, &pools, errors);
    services::compile_overrides(&raw.overrides, &mut services, &pools, errors);
    check_preferences(&raw, &pools, errors);
    let cluster = compile_cluster(&raw, base_dir, errors);
    let health = compile_health(&raw, errors);
    let latency = latency::compile_latency(&raw, errors);
    latency::check_latency(
        &raw,
        &latency,
        &services,
        &pools,
        &geo,
        cluster.as_ref(),
        errors,
    );
    let webhooks = compile_webhooks(&raw, base_dir, errors);
    let dnstap = dnstap::compile_dnstap(&raw, &server, base_dir, errors);
    Config {
        dnstap,
        health,
        latency,
        webhooks,
        server,
        admin,
        rrl,
        geo,
        zones,
        services,
        pools,
        cluster,
    }
}
