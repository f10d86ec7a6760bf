//! Config drift: each instance's config digest by section, compared with this one's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use tracing::{info, warn};

use super::values::differing_sections;
use super::{CLUSTER_CONFIG_DRIFT, Fleet};

impl Fleet {
    /// The config digest changed (a reload): tell the fleet.
    pub fn set_digest(&self, digest: &str, sections: &BTreeMap<String, String>) {
        let mut me = (**self.0.me.load()).clone();
        me.config_digest = digest.to_string();
        me.config_sections = sections.clone();
        self.0.me.store(Arc::new(me));
        self.0.reregister.notify_one();
        self.update_drift();
    }

    pub(super) fn update_drift(&self) {
        let me = self.0.me.load();
        let mine = me.config_digest.clone();
        let instances = self.0.instances.load();
        // Probe-only agents (no DNS listeners) serve no answers: not drift, on either side
        // (an agent's config differs from the servers' by design: it serves nothing).
        let agent = me.listen.is_empty();
        let differing: Vec<&String> = instances
            .iter()
            .filter(|_| !agent)
            .filter(|(_, seen)| !seen.info.listen.is_empty())
            .filter(|(_, seen)| seen.info.config_digest != mine)
            .map(|(id, _)| id)
            .collect();
        let sections: std::collections::BTreeSet<String> = instances
            .iter()
            .filter(|(id, _)| differing.contains(id))
            .flat_map(|(_, seen)| {
                differing_sections(&me.config_sections, &seen.info.config_sections)
            })
            .collect();
        let drift = !differing.is_empty();
        metrics::gauge!(CLUSTER_CONFIG_DRIFT).set(if drift { 1.0 } else { 0.0 });
        if self.0.drift.swap(drift, Ordering::Relaxed) != drift {
            if drift {
                warn!(
                    instances = ?differing,
                    sections = ?sections,
                    digest = %mine,
                    "config drift: instances of the fleet serve a different config"
                );
            } else {
                info!("config drift ended: every instance serves this config");
            }
            self.emit(
                "drift",
                json!({ "drift": drift, "instances": differing, "sections": sections, "digest": mine }),
            );
        }
    }
}
