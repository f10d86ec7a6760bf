//! Members added at run time, shared through the store (`member/<pool>/<name>`, durable):
//! written by the instance that was asked, followed by every instance, which merges them
//! into its config ([`crate::runtime`]) and rebuilds. A value that is not a member of
//! its key counts for nothing (and is counted).

use super::{ClusterError, Entry, Fleet};
use crate::routing::EndpointKey;
use crate::runtime::RuntimeMember;

impl Fleet {
    /// Where the fleet's run-time members go whenever they change (the list as the store
    /// holds it): the app's follower, which applies them like a reload.
    pub fn follow_members(&self, sink: tokio::sync::mpsc::Sender<Vec<RuntimeMember>>) {
        let _ = self.0.runtime_sink.set(sink);
    }

    /// Writes a run-time member for the whole fleet (tried again through a leader
    /// election). Refused while the store stays unreachable: a member is never added on
    /// one instance only.
    pub async fn put_member(&self, member: &RuntimeMember) -> Result<(), ClusterError> {
        let key = EndpointKey {
            pool: member.pool.clone(),
            member: member.name.clone(),
        };
        let bytes = serde_json::to_vec(member).unwrap_or_default();
        let path = self.key_of("member", &key);
        self.retrying("member", || self.0.engine.put(&path, bytes.clone(), None))
            .await
    }

    /// Removes a run-time member for the whole fleet.
    pub async fn delete_member(&self, key: &EndpointKey) -> Result<(), ClusterError> {
        let path = self.key_of("member", key);
        self.retrying("member", || self.0.engine.delete_many(vec![path.clone()]))
            .await
    }

    /// A member value as stored: JSON of a [`RuntimeMember`] whose pool and name are its
    /// key's, with the fields a member may have.
    pub(super) fn valid_member(&self, key: &EndpointKey, entry: &Entry) -> Option<RuntimeMember> {
        let member = match serde_json::from_slice::<RuntimeMember>(&entry.value) {
            Ok(member) => member,
            Err(error) => {
                self.ignore(&entry.key, "invalid", &format!("not a member: {error}"));
                return None;
            }
        };
        if member.pool != key.pool || member.name != key.member {
            self.ignore(&entry.key, "invalid", "a member stored under another's key");
            return None;
        }
        if let Some(field) = member
            .fields
            .keys()
            .find(|k| !crate::runtime::FIELDS.contains(&k.as_str()))
        {
            self.ignore(
                &entry.key,
                "invalid",
                &format!("a member with an unknown field {field:?}"),
            );
            return None;
        }
        if let Some(why) = crate::runtime::refused(&member) {
            self.ignore(&entry.key, "invalid", &why);
            return None;
        }
        Some(member)
    }

    /// The store's members, read again: kept, and handed on when they changed.
    pub(super) async fn replace_members(
        &self,
        members: std::collections::BTreeMap<EndpointKey, RuntimeMember>,
    ) {
        if let Ok(mut runtime) = self.0.runtime.lock() {
            *runtime = members;
        }
        // Handed on after every resync, changed or not: an instance that started with an
        // older list (from its state file) follows the store's.
        self.hand_on_members().await;
    }

    /// A member written or removed.
    pub(super) async fn apply_member(&self, put: bool, key: EndpointKey, entry: &Entry) {
        let value = put.then(|| self.valid_member(&key, entry)).flatten();
        if let Ok(mut runtime) = self.0.runtime.lock() {
            match value {
                Some(member) => {
                    runtime.insert(key, member);
                }
                None => {
                    runtime.remove(&key);
                }
            }
        }
        self.hand_on_members().await;
    }

    async fn hand_on_members(&self) {
        let list: Vec<RuntimeMember> = match self.0.runtime.lock() {
            Ok(runtime) => runtime.values().cloned().collect(),
            Err(_) => return,
        };
        if let Some(sink) = self.0.runtime_sink.get() {
            let _ = sink.send(list).await;
        }
    }
}
