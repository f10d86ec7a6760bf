//! Members added at run time (`PUT /v1/pools/{pool}/members/{name}`, `gto ctl members
//! add`): kept apart from the config file, in the state file and (with `[cluster]`) in
//! etcd, and merged into the config text as `[[pool.member]]` tables of their pool before
//! it is read, so they are validated and compiled exactly as written members are (every
//! error at once, by field).
//!
//! The config file stays the base: a member the file defines wins over a run-time one of
//! the same pool and name (the run-time one is dropped, and the reload says so), and a
//! run-time member whose pool the file no longer has is dropped likewise.

use serde::{Deserialize, Serialize};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// One member added at run time: its pool, its name, and its table's other fields as
/// given (`addresses`, `location`, `weight`, `capacity`, `site`, `check`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeMember {
    /// The pool it joins.
    pub pool: String,
    /// Its name in the pool.
    pub name: String,
    /// The rest of its `[[pool.member]]` table.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The fields a run-time member may set.
pub const FIELDS: [&str; 6] = [
    "addresses",
    "location",
    "weight",
    "capacity",
    "site",
    "check",
];

/// Why a run-time member may not be taken, whatever the config says: a check that runs a
/// command (`kind = "exec"`, `command`) comes only from the config file. Through the API or
/// the fleet's store it would let an admin token, or whoever can write to etcd, run
/// programs on every instance.
pub fn refused(member: &RuntimeMember) -> Option<String> {
    let check = member.fields.get("check")?;
    let exec = check.get("kind").and_then(|k| k.as_str()) == Some("exec")
        || check.get("command").is_some();
    exec.then(|| {
        "check: an exec check (a command run on every instance) comes only from the config \
         file, not from a member added at run time"
            .to_string()
    })
}

/// The config text with the run-time members added to their pools; the members applied,
/// and why the others were not (their pool is gone, or the file defines one of that name).
pub fn merge(
    text: &str,
    members: &[RuntimeMember],
) -> Result<(String, Vec<RuntimeMember>, Vec<String>), String> {
    if members.is_empty() {
        return Ok((text.to_string(), Vec::new(), Vec::new()));
    }
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    let mut applied = Vec::new();
    let mut dropped = Vec::new();
    let Some(pools) = document
        .get_mut("pool")
        .and_then(Item::as_array_of_tables_mut)
    else {
        dropped.extend(members.iter().map(|m| {
            format!(
                "run-time member {}/{} dropped: the config has no pools",
                m.pool, m.name
            )
        }));
        return Ok((text.to_string(), applied, dropped));
    };
    for member in members {
        if let Some(why) = refused(member) {
            dropped.push(format!(
                "run-time member {}/{} dropped: {why}",
                member.pool, member.name
            ));
            continue;
        }
        let Some(pool) = pools
            .iter_mut()
            .find(|p| p.get("name").and_then(Item::as_str) == Some(member.pool.as_str()))
        else {
            dropped.push(format!(
                "run-time member {}/{} dropped: the config has no pool {:?}",
                member.pool, member.name, member.pool
            ));
            continue;
        };
        let list = pool
            .entry("member")
            .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
        let Some(list) = list.as_array_of_tables_mut() else {
            dropped.push(format!(
                "run-time member {}/{} dropped: pool {:?} writes its members inline",
                member.pool, member.name, member.pool
            ));
            continue;
        };
        if list
            .iter()
            .any(|m| m.get("name").and_then(Item::as_str) == Some(member.name.as_str()))
        {
            dropped.push(format!(
                "run-time member {}/{} dropped: the config file now defines a member of that \
                 name, which wins",
                member.pool, member.name
            ));
            continue;
        }
        list.push(table_of(member)?);
        applied.push(member.clone());
    }
    Ok((document.to_string(), applied, dropped))
}

/// The member's `[[pool.member]]` table.
fn table_of(member: &RuntimeMember) -> Result<Table, String> {
    let mut table = Table::new();
    table.insert("name", Item::Value(Value::from(member.name.as_str())));
    for (key, value) in &member.fields {
        let value = value_of(value).ok_or_else(|| format!("{key}: null is not a TOML value"))?;
        table.insert(key, Item::Value(value));
    }
    Ok(table)
}

/// A JSON value as a TOML one (objects as inline tables); None for null.
fn value_of(value: &serde_json::Value) -> Option<Value> {
    Some(match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            let mut array = Array::new();
            for item in items {
                array.push(value_of(item)?);
            }
            Value::Array(array)
        }
        serde_json::Value::Object(fields) => {
            let mut table = InlineTable::new();
            for (key, item) in fields {
                table.insert(key, value_of(item)?);
            }
            Value::InlineTable(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pool: &str, name: &str, fields: serde_json::Value) -> RuntimeMember {
        RuntimeMember {
            pool: pool.into(),
            name: name.into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn members_join_their_pool_and_the_file_wins_a_name() {
        let text = "[[pool]]\nname = \"a\"\n[[pool.member]]\nname = \"x\"\naddresses = [\"192.0.2.1\"]\n\
                    [[pool]]\nname = \"b\"\n";
        let (merged, applied, dropped) = merge(
            text,
            &[
                member(
                    "b",
                    "y",
                    serde_json::json!({"addresses": ["192.0.2.2"], "weight": 5,
                    "location": {"lat": 1.5, "lon": 2.0}}),
                ),
                member("a", "x", serde_json::json!({"addresses": ["192.0.2.9"]})),
                member("gone", "z", serde_json::json!({})),
            ],
        )
        .unwrap();
        let parsed: toml::Table = toml::from_str(&merged).unwrap();
        let pools = parsed["pool"].as_array().unwrap();
        let b = pools[1]["member"].as_array().unwrap();
        assert_eq!(b[0]["name"].as_str(), Some("y"));
        assert_eq!(b[0]["weight"].as_integer(), Some(5));
        assert_eq!(b[0]["location"]["lat"].as_float(), Some(1.5));
        assert_eq!(pools[0]["member"].as_array().unwrap().len(), 1);
        assert_eq!(applied.len(), 1);
        assert_eq!(dropped.len(), 2);
        assert!(dropped[0].contains("a/x") && dropped[0].contains("wins"));
        assert!(dropped[1].contains("no pool \"gone\""));
    }

    #[test]
    fn a_run_time_member_cannot_bring_a_command_to_run() {
        for check in [
            serde_json::json!({"kind": "exec"}),
            serde_json::json!({"command": ["/bin/sh", "-c", "id"]}),
        ] {
            let evil = member(
                "a",
                "evil",
                serde_json::json!({"addresses": ["192.0.2.9"], "check": check}),
            );
            assert!(refused(&evil).is_some());
            let (merged, applied, dropped) =
                merge("[[pool]]\nname = \"a\"\n", std::slice::from_ref(&evil)).unwrap();
            assert!(applied.is_empty() && !merged.contains("evil"), "{merged}");
            assert!(dropped[0].contains("exec check"), "{dropped:?}");
        }
        let fine = member("a", "ok", serde_json::json!({"check": {"port": 8443}}));
        assert_eq!(refused(&fine), None);
    }
}
