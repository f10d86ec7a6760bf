//! `[admin]` and `[[webhook]]`: the admin API's listener, tokens and limits, and where events go.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawAdmin, RawConfig, RawWebhook};
use crate::config::{AdminSettings, Secret, Webhook};

/// The admin API listens on loopback by default.
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8053";

pub(super) fn compile_admin(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> AdminSettings {
    let default_listen = SocketAddr::from(([127, 0, 0, 1], 8053));
    let Some(admin) = &raw.admin else {
        return AdminSettings {
            listen: Some(default_listen),
            token: None,
            ..AdminSettings::default()
        };
    };
    let RawAdmin {
        enabled,
        listen,
        token_file,
        max_drain,
        max_connections,
        header_timeout,
        hosts,
        audit_file,
        token: named,
    } = admin.get_ref();
    let defaults = AdminSettings::default();
    let hosts = hosts
        .as_ref()
        .map_or_else(Vec::new, |list| compile_hosts(list, errors));
    let max_drain = errors.setting(
        max_drain.as_ref(),
        "admin.max_drain",
        defaults.max_drain,
        |v| parse_duration(v).filter(|d| !d.is_zero() && *d <= AdminSettings::MAX_DRAIN_LIMIT),
        "not a duration of at most 100 years (e.g. \"366d\")",
    );
    let header_timeout = errors.setting(
        header_timeout.as_ref(),
        "admin.header_timeout",
        defaults.header_timeout,
        |v| parse_duration(v).filter(|d| !d.is_zero() && *d <= Duration::from_secs(60)),
        "not a duration of at most 60s (e.g. \"5s\")",
    );
    let max_connections = max_connections
        .as_ref()
        .and_then(|v| errors.ranged(v, "admin.max_connections", 1..=10_000))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(defaults.max_connections);
    let address = match listen {
        None => default_listen,
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                errors.at(
                    text,
                    "admin.listen",
                    format!(
                        "{:?} is not an address:port (e.g. \"{DEFAULT_ADMIN_LISTEN}\")",
                        text.get_ref()
                    ),
                );
                default_listen
            }
        },
    };
    let token = token_file
        .as_ref()
        .and_then(|file| read_token(file, base_dir, errors));
    let tokens = compile_tokens(named, token.as_ref(), base_dir, errors);
    let enabled = enabled.unwrap_or(true);
    if enabled && !address.ip().is_loopback() && token_file.is_none() && named.is_empty() {
        errors.at(
            admin,
            "admin.listen",
            format!("{address} is not loopback: set admin.token_file so changes need a token"),
        );
    }
    let audit_file = audit_file
        .as_ref()
        .and_then(|file| compile_audit_file(file, base_dir, errors));
    AdminSettings {
        listen: enabled.then_some(address),
        token,
        tokens,
        audit_file,
        max_drain,
        max_connections,
        header_timeout,
        hosts,
    }
}

/// `admin.hosts`: the host names the API answers to besides its addresses.
fn compile_hosts(list: &Spanned<Vec<String>>, errors: &mut Collector<'_>) -> Vec<String> {
    let mut names = Vec::new();
    for (i, name) in list.get_ref().iter().enumerate() {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if valid {
            names.push(name);
        } else {
            errors.at(
                list,
                format!("admin.hosts[{i}]"),
                format!("{name:?} is not a host name"),
            );
        }
    }
    names
}

/// `[[admin.token]]`: unique names (not `default`, which `token_file` is), roles, and
/// tokens of at least 16 characters that no other token has.
fn compile_tokens(
    raw: &[Spanned<crate::config::raw::RawToken>],
    default: Option<&Secret>,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Vec<crate::config::NamedToken> {
    use crate::config::Role;
    let mut tokens: Vec<crate::config::NamedToken> = Vec::new();
    for (i, token) in raw.iter().enumerate() {
        let path = format!("admin.token[{i}]");
        let spec = token.get_ref();
        let name = spec.name.get_ref().trim().to_string();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            errors.at(
                &spec.name,
                format!("{path}.name"),
                format!("{name:?} is not a name of 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        } else if name == AdminSettings::DEFAULT_TOKEN || tokens.iter().any(|t| t.name == name) {
            errors.at(
                &spec.name,
                format!("{path}.name"),
                format!("token name {name:?} is taken (`default` is token_file's)"),
            );
        }
        let role = match spec.role.as_ref() {
            None => Role::Admin,
            Some(role) => match role.get_ref().as_str() {
                "read" => Role::Read,
                "operate" => Role::Operate,
                "admin" => Role::Admin,
                other => {
                    errors.at(
                        role,
                        format!("{path}.role"),
                        format!("{other:?} is not \"read\", \"operate\" or \"admin\""),
                    );
                    Role::Read
                }
            },
        };
        let Some(secret) = read_secret(&spec.file, base_dir, &format!("{path}.file"), errors)
        else {
            continue;
        };
        let taken = tokens.iter().any(|t| t.secret == secret) || default == Some(&secret);
        if taken {
            errors.at(
                &spec.file,
                format!("{path}.file"),
                "holds the same token as another: each token must tell who made a change",
            );
        }
        tokens.push(crate::config::NamedToken { name, role, secret });
    }
    tokens
}

/// `admin.audit_file`: relative to the config's directory, in a directory that exists.
fn compile_audit_file(
    file: &Spanned<String>,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<std::path::PathBuf> {
    let path = errors.resolve_file(base_dir, file, "admin.audit_file")?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(base_dir);
    if !dir.is_dir() {
        errors.at(
            file,
            "admin.audit_file",
            format!("its directory {} does not exist", dir.display()),
        );
        return None;
    }
    Some(path)
}

/// `admin.token_file`: a token of at least 16 characters.
fn read_token(
    file: &Spanned<String>,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<Secret> {
    read_secret(file, base_dir, "admin.token_file", errors)
}

/// A token file: at least 16 characters, surrounding whitespace trimmed.
fn read_secret(
    file: &Spanned<String>,
    base_dir: &Path,
    setting: &str,
    errors: &mut Collector<'_>,
) -> Option<Secret> {
    let path = errors.resolve_file(base_dir, file, setting.to_string())?;
    match crate::files::read_to_string(&path, errors.file_limit) {
        Ok(text) if text.trim().len() >= 16 => Some(Secret::new(text.trim().to_string())),
        Ok(_) => {
            errors.at(
                file,
                setting,
                format!(
                    "{} must hold a token of at least 16 characters",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            errors.at(file, setting, format!("cannot read token: {e}"));
            None
        }
    }
}

pub(super) fn compile_webhooks(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Vec<Webhook> {
    let Some(notify) = &raw.notify else {
        return Vec::new();
    };
    let mut webhooks = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, hook) in notify.get_ref().webhook.iter().enumerate() {
        let path = format!("notify.webhook[{i}]");
        let RawWebhook {
            name,
            url,
            events,
            secret_file,
            ca_file,
            queue,
        } = hook.get_ref();
        let name = webhook_name(name.as_ref(), i, &path, errors);
        if !names.insert(name.clone()) {
            errors.at(
                hook,
                format!("{path}.name"),
                format!("webhook {name:?} is named twice"),
            );
        }
        let url = match url {
            Some(url)
                if ["http://", "https://"]
                    .iter()
                    .any(|s| url.get_ref().starts_with(s))
                    && url.get_ref().parse::<axum::http::Uri>().is_ok() =>
            {
                url.get_ref().clone()
            }
            Some(url) => {
                errors.at(url, format!("{path}.url"), "not an http:// or https:// URL");
                continue;
            }
            None => {
                errors.at(hook, format!("{path}.url"), "missing");
                continue;
            }
        };
        let events = events
            .as_ref()
            .map_or_else(Vec::new, |list| event_kinds(list, &path, errors));
        let secret = secret_file
            .as_ref()
            .and_then(|f| errors.read_file(base_dir, f, format!("{path}.secret_file")))
            .map(|s| Secret::new(s.trim().to_string()));
        let ca = ca_file
            .as_ref()
            .and_then(|f| errors.read_file(base_dir, f, format!("{path}.ca_file")));
        let queue = queue
            .as_ref()
            .and_then(|q| errors.ranged(q, format!("{path}.queue"), 1..=100_000))
            .and_then(|q| usize::try_from(q).ok())
            .unwrap_or(1024);
        webhooks.push(Webhook {
            name,
            url,
            events,
            secret,
            ca,
            queue,
        });
    }
    webhooks
}

/// A webhook's `name`: `webhook<i>` unless set; 1 to 64 letters, digits, '-', '_', '.'.
fn webhook_name(
    name: Option<&Spanned<String>>,
    i: usize,
    path: &str,
    errors: &mut Collector<'_>,
) -> String {
    match name {
        None => format!("webhook{i}"),
        Some(name) => {
            let text = name.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                errors.at(
                    name,
                    format!("{path}.name"),
                    "1 to 64 letters, digits, '-', '_' or '.'",
                );
            }
            text.clone()
        }
    }
}

/// A webhook's `events`: kinds gto emits.
fn event_kinds(list: &Spanned<Vec<String>>, path: &str, errors: &mut Collector<'_>) -> Vec<String> {
    for kind in list.get_ref() {
        if !crate::config::EVENT_KINDS.contains(&kind.as_str()) {
            errors.at(
                list,
                format!("{path}.events"),
                format!(
                    "unknown event kind {kind:?}; known: {}",
                    crate::config::EVENT_KINDS.join(", ")
                ),
            );
        }
    }
    list.get_ref().clone()
}
