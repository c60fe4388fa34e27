//! Spring's relaxed binding, as Lavalink's operators rely on it: `player-update-interval`,
//! `playerUpdateInterval` and `player_update_interval` name the same key, and every key can be
//! set from the environment (`LAVALINK_SERVER_PLAYERUPDATEINTERVAL=2`,
//! `LAVALINK_SERVER_FILTERS_CHANNEL_MIX=false`, `METRICS_PROMETHEUS_ENABLED=true`).
//!
//! Keys are matched by their canonical form (letters and digits, lower case) against the keys of
//! the file model's defaults, and renamed to the model's spelling before serde reads the tree.

use super::ConfigError;
use serde_yaml_ng::{Mapping, Value};

/// `playerUpdateInterval`, `player-update-interval` → `playerupdateinterval`.
pub fn canonical(key: &str) -> String {
    key.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// The key of `known` whose canonical form is `canonical`.
fn known_key<'a>(known: &'a Mapping, canonical_key: &str) -> Option<&'a str> {
    known.keys().filter_map(Value::as_str).find(|k| canonical(k) == canonical_key)
}

/// Renames the keys of `user` to their spelling in `known` (the defaults' tree), recursively.
/// Keys `known` does not have are left as they are (serde then reports them as unknown).
pub fn normalize(user: &mut Value, known: &Value) {
    let (Value::Mapping(user), Value::Mapping(known)) = (user, known) else { return };
    let keys: Vec<Value> = user.keys().cloned().collect();
    for key in keys {
        let Some(name) = key.as_str() else { continue };
        let Some(spelled) = known_key(known, &canonical(name)) else { continue };
        let Some(mut value) = user.remove(&key) else { continue };
        if let Some(sub) = known.get(spelled) {
            normalize(&mut value, sub);
        }
        match user.get_mut(spelled) {
            // Two spellings of one key in one file: merge mappings, else the later one wins.
            Some(Value::Mapping(existing)) if value.is_mapping() => {
                if let Value::Mapping(more) = value {
                    existing.extend(more);
                }
            }
            _ => {
                user.insert(Value::String(spelled.to_string()), value);
            }
        }
    }
}

/// Finds the path of an environment variable's underscore-separated segments in `known`:
/// each key may span several segments (`CHANNEL_MIX` → `channelMix`). Returns the keys' spellings.
fn resolve(segments: &[String], known: &Value) -> Option<Vec<String>> {
    if segments.is_empty() {
        return Some(Vec::new());
    }
    let Value::Mapping(map) = known else { return None };
    for take in 1..=segments.len() {
        let joined: String = segments[..take].concat();
        if let Some(key) = known_key(map, &joined) {
            let sub = map.get(key).unwrap_or(&Value::Null);
            let rest = &segments[take..];
            if rest.is_empty() || sub.is_mapping() {
                if let Some(mut path) = resolve(rest, sub) {
                    path.insert(0, key.to_string());
                    return Some(path);
                }
            }
        }
    }
    None
}

/// The value an environment variable gives a key whose default is `known`, typed like it.
fn typed(name: &str, raw: &str, known: &Value) -> Result<Value, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { path: "environment".into(), key: name.into(), message };
    let scalar = |s: &str| serde_yaml_ng::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()));
    Ok(match known {
        Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(invalid(format!("`{raw}` is not true or false"))),
        },
        Value::Number(_) => match scalar(raw.trim()) {
            n @ Value::Number(_) => n,
            _ => return Err(invalid(format!("`{raw}` is not a number"))),
        },
        Value::String(_) => Value::String(raw.to_string()),
        Value::Sequence(_) => Value::Sequence(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect()),
        _ => scalar(raw),
    })
}

/// Applies environment variables named after keys (Spring's binding: `.` → `_`, upper case,
/// dashes dropped). Returns the names of those applied. Variables naming no key are ignored.
pub fn apply_env(user: &mut Value, known: &Value, env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    vars.sort();
    for (name, raw) in vars {
        let segments: Vec<String> = name.split('_').filter(|s| !s.is_empty()).map(canonical).collect();
        let Some(path) = resolve(&segments, known) else { continue };
        let leaf = path.iter().try_fold(known, |node, key| node.get(key.as_str())).unwrap_or(&Value::Null);
        if leaf.is_mapping() {
            continue;
        }
        let value = typed(&name, &raw, leaf)?;
        set(user, &path, value);
        applied.push(name);
    }
    Ok(applied)
}

fn set(tree: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = tree;
    for key in parents {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else { return };
        node = map.entry(Value::String(key.clone())).or_insert(Value::Mapping(Mapping::new()));
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(map) = node {
        map.insert(Value::String(last.clone()), value);
    }
}

/// Whether the dotted `path` is set (to anything) in `tree`.
pub fn is_set(tree: &Value, path: &str) -> bool {
    path.split('.').try_fold(tree, |node, key| node.get(key)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn spellings_of_a_key_are_one_key() {
        let known = yaml("lavalink:\n  server:\n    playerUpdateInterval: 5\n    gcWarnings: null\n    filters:\n      channelMix: true\n");
        let mut user = yaml("lavalink:\n  server:\n    player-update-interval: 2\n    gc-warnings: false\n    filters:\n      channel_mix: false\n    mystery-key: 1\n");
        normalize(&mut user, &known);
        assert_eq!(user, yaml("lavalink:\n  server:\n    playerUpdateInterval: 2\n    gcWarnings: false\n    filters:\n      channelMix: false\n    mystery-key: 1\n"));
    }

    #[test]
    fn environment_variables_bind_like_spring() {
        let known = yaml("server:\n  port: 2333\nlavalink:\n  server:\n    password: x\n    playerUpdateInterval: 5\n    sources:\n      http: true\n    filters:\n      channelMix: true\n    ratelimit:\n      ipBlocks: []\n    httpConfig:\n      proxyHost: ''\n");
        let mut user = yaml("server:\n  port: 1\n");
        let env = [
            ("LAVALINK_SERVER_PLAYERUPDATEINTERVAL", "2"),
            ("LAVALINK_SERVER_SOURCES_HTTP", "FALSE"),
            ("LAVALINK_SERVER_FILTERS_CHANNEL_MIX", "false"),
            ("LAVALINK_SERVER_PASSWORD", "123"),
            ("LAVALINK_SERVER_RATELIMIT_IPBLOCKS", "10.0.0.0/30, 10.0.1.0/30"),
            ("LAVALINK_SERVER_HTTP_CONFIG_PROXY_HOST", "proxy.local"),
            ("SERVER_PORT", "4000"),
            ("SERVER_SOFTWARE", "unrelated"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let applied = apply_env(&mut user, &known, env).unwrap();
        assert_eq!(applied.len(), 7, "{applied:?}");
        assert_eq!(
            user,
            yaml("server:\n  port: 4000\nlavalink:\n  server:\n    playerUpdateInterval: 2\n    sources:\n      http: false\n    filters:\n      channelMix: false\n    password: '123'\n    ratelimit:\n      ipBlocks: [10.0.0.0/30, 10.0.1.0/30]\n    httpConfig:\n      proxyHost: proxy.local\n")
        );
        let bad = apply_env(&mut user, &known, [("SERVER_PORT".to_string(), "x".to_string())]).unwrap_err().to_string();
        assert!(bad.contains("SERVER_PORT"), "{bad}");
    }
}
