//! `DATANET_*` environment overrides, one per config key, derived from the types.
//!
//! [`keys`] lists every key by running `Config`'s own `Deserialize` against a tracing
//! deserializer that records each field it is asked for, so a field added to any section gets
//! its variable, its `datanet run --help` line and its test without a list to keep in step.
//! [`overlay`] writes the config as a TOML table, sets each variable's value at its key (parsed
//! for the key's kind: `true`/`false`, integers, strings as written, lists comma-separated or
//! as a TOML array) and deserializes it again; a value the key's type refuses is reported with
//! the variable's name.

use super::{Config, ConfigError};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// What a key holds, as far as parsing an environment value goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Bool,
    Integer,
    Float,
    String,
    List,
    /// Anything else: the value is parsed as a TOML value.
    Toml,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Bool => "true or false",
            KeyKind::Integer => "integer",
            KeyKind::Float => "number",
            KeyKind::String => "string",
            KeyKind::List => "list: comma-separated, or a TOML array",
            KeyKind::Toml => "TOML value",
        }
    }
}

/// One config key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigKey {
    /// Dotted path, as in the file: `net.peers_max`.
    pub path: String,
    pub kind: KeyKind,
    /// An `Option`: an empty value unsets it.
    pub optional: bool,
}

impl ConfigKey {
    /// `DATANET_` and the path in upper case, dots as underscores: `DATANET_NET_PEERS_MAX`.
    pub fn env_var(&self) -> String {
        format!("DATANET_{}", self.path.replace('.', "_").to_ascii_uppercase())
    }
}

/// Shorter names that older setups use; each still sets its key (the full name wins when both
/// are set).
pub const ALIASES: [(&str, &str); 6] = [
    ("DATANET_LISTEN", "net.listen"),
    ("DATANET_SEEDS", "net.seeds"),
    ("DATANET_IROH_BIND", "net.iroh_bind"),
    ("DATANET_PUBLIC", "net.public"),
    ("DATANET_PEERS_MAX", "net.peers_max"),
    ("DATANET_JOIN", "datanets.join"),
];

/// Every key of [`Config`], in declaration order.
pub fn keys() -> Vec<ConfigKey> {
    let mut out = Vec::new();
    // Only a field type the tracer cannot default (an enum) fails; `every_key_is_traced` runs it.
    if let Err(e) = Config::deserialize(Tracer { path: String::new(), optional: false, out: &mut out }) {
        unreachable!("config keys cannot be listed: {e}");
    }
    out
}

/// `config` with every `DATANET_*` variable that `var` returns applied.
pub fn overlay(config: &Config, var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut table = toml::Value::try_from(config)
        .map_err(|e| ConfigError::Invalid { key: "(config)".into(), reason: e.to_string() })?;
    let mut out = config.clone();
    for key in keys() {
        let aliases = ALIASES.iter().filter(|(_, p)| *p == key.path).map(|(n, _)| n.to_string());
        for name in aliases.chain([key.env_var()]) {
            let Some(raw) = var(&name) else { continue };
            let err = |reason: String| ConfigError::Env { var: name.clone(), key: key.path.clone(), reason };
            set(&mut table, &key.path, parse(&key, &raw).map_err(err)?);
            out = table.clone().try_into().map_err(|e: toml::de::Error| err(e.message().trim().to_string()))?;
        }
    }
    Ok(out)
}

/// The `datanet run --help` text listing every variable.
pub fn help() -> String {
    let defaults = toml::Value::try_from(Config::default()).ok();
    let mut s = String::from(
        "Environment: every config key is also DATANET_<SECTION>_<KEY> (flags override it, it overrides the file):\n",
    );
    for k in keys() {
        let default = defaults.as_ref().and_then(|t| get(t, &k.path)).map(|v| format!(", default {v}"));
        let kind = if k.optional { format!("{}, empty unsets", k.kind.describe()) } else { k.kind.describe().into() };
        s += &format!("  {:<40} {} ({kind}{})\n", k.env_var(), k.path, default.unwrap_or_default());
    }
    let aliases: Vec<String> = ALIASES.iter().map(|(n, p)| format!("{n} ({p})")).collect();
    s += &format!("Older names still read: {}.\n", aliases.join(", "));
    s
}

fn parse(key: &ConfigKey, raw: &str) -> Result<Option<toml::Value>, String> {
    let t = raw.trim();
    if key.optional && t.is_empty() {
        return Ok(None);
    }
    let v = match key.kind {
        KeyKind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("{raw:?} is not true or false")),
        },
        KeyKind::Integer => toml::Value::Integer(t.parse().map_err(|_| format!("{raw:?} is not an integer"))?),
        KeyKind::Float => toml::Value::Float(t.parse().map_err(|_| format!("{raw:?} is not a number"))?),
        KeyKind::String => toml::Value::String(raw.to_string()),
        KeyKind::List if t.starts_with('[') => toml_value(t)?,
        KeyKind::List => toml::Value::Array(
            t.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| toml::Value::String(x.into())).collect(),
        ),
        KeyKind::Toml => toml_value(t)?,
    };
    Ok(Some(v))
}

fn toml_value(text: &str) -> Result<toml::Value, String> {
    let mut t: toml::Table =
        toml::from_str(&format!("v = {text}")).map_err(|e| format!("{text:?} is not a TOML value: {}", e.message()))?;
    t.remove("v").ok_or_else(|| format!("{text:?} is not a TOML value"))
}

/// Sets (or with `None` removes) the value at a dotted path, creating sections on the way.
fn set(table: &mut toml::Value, path: &str, value: Option<toml::Value>) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = table;
    for p in parts {
        let Some(t) = cur.as_table_mut() else { return };
        cur = t.entry(p).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let Some(t) = cur.as_table_mut() {
        match value {
            Some(v) => {
                t.insert(last.to_string(), v);
            }
            None => {
                t.remove(last);
            }
        }
    }
}

fn get<'a>(table: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(table, |cur, p| cur.get(p))
}

/// Why the tracer stopped (a field type it cannot stand in for).
#[derive(Debug)]
struct TraceError(String);

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// A deserializer that records the path of every leaf it is asked for and answers it with an
/// empty value of the asked-for type (the config is thrown away).
struct Tracer<'a> {
    path: String,
    optional: bool,
    out: &'a mut Vec<ConfigKey>,
}

impl Tracer<'_> {
    fn leaf(self, kind: KeyKind) {
        self.out.push(ConfigKey { path: self.path, kind, optional: self.optional });
    }
}

macro_rules! leaves {
    ($kind:ident, |$visitor:ident| $visit:expr => $($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, $visitor: V) -> Result<V::Value, TraceError> {
            self.leaf(KeyKind::$kind);
            $visit
        })*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    leaves!(Bool, |v| v.visit_bool(false) => deserialize_bool);
    leaves!(Integer, |v| v.visit_u64(0) => deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64);
    leaves!(Float, |v| v.visit_f64(0.0) => deserialize_f32 deserialize_f64);
    leaves!(String, |v| v.visit_str("") => deserialize_char deserialize_str deserialize_string);
    leaves!(Toml, |v| v.visit_unit() => deserialize_unit deserialize_ignored_any);

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_map(Fields { prefix: self.path, fields, next: 0, out: self.out })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(Tracer { optional: true, ..self })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf(KeyKind::List);
        visitor.visit_seq(Empty)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf(KeyKind::Toml);
        visitor.visit_map(Empty)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("`{}` is an enum; give it a KeyKind in config::env", self.path)))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("`{}` does not say its type; give it a KeyKind in config::env", self.path)))
    }
}

/// The fields of one section, each answered by a tracer one level down.
struct Fields<'a> {
    prefix: String,
    fields: &'static [&'static str],
    next: usize,
    out: &'a mut Vec<ConfigKey>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        match self.fields.get(self.next) {
            Some(f) => seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(*f)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let f = self.fields[self.next];
        self.next += 1;
        let path = if self.prefix.is_empty() { f.to_string() } else { format!("{}.{f}", self.prefix) };
        seed.deserialize(Tracer { path, optional: false, out: self.out })
    }
}

/// An empty list or map.
struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = TraceError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<Option<T::Value>, TraceError> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = TraceError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, TraceError> {
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError("no value".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn apply(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        overlay(&Config::default(), |k| vars.get(k).cloned())
    }

    // The tracer finds every key of every section, including optional ones absent from a
    // serialized default config, and nothing twice.
    #[test]
    fn every_key_is_traced() {
        let keys = keys();
        let paths: Vec<&str> = keys.iter().map(|k| k.path.as_str()).collect();
        for p in ["datadir", "net.listen", "net.seeds_file", "net.catchup_batch_max", "api.bind", "api.metrics_open"] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        for p in ["datanets.join", "epoch.train_threads", "epoch.eval_fetch_timeout_ms", "api.metrics_token_file"] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let mut dedup = paths.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), paths.len());
        // Every key of the serialized default is traced (the optional ones are absent there).
        let default = toml::Value::try_from(Config::default()).unwrap();
        let mut flat = Vec::new();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            for (k, v) in v.as_table().unwrap() {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_table() { walk(&p, v, out) } else { out.push(p) }
            }
        }
        walk("", &default, &mut flat);
        for p in &flat {
            assert!(paths.contains(&p.as_str()), "{p} not traced");
        }
        assert!(keys.iter().find(|k| k.path == "net.seeds_file").unwrap().optional);
        for (alias, path) in ALIASES {
            assert!(paths.contains(&path), "alias {alias} names no key");
        }
    }

    // Every key is reachable through its own variable: setting DATANET_<SECTION>_<KEY> to a
    // value other than the default changes exactly that key.
    #[test]
    fn every_key_reachable_by_its_variable() {
        for key in keys() {
            let value = match key.kind {
                KeyKind::Bool => "true",
                KeyKind::Integer => "7",
                KeyKind::Float => "0.5",
                KeyKind::String => "some/thing",
                KeyKind::List => "a, b",
                KeyKind::Toml => unreachable!("no such key today: {}", key.path),
            };
            let var = key.env_var();
            let c = apply(&[(&var, value)]).unwrap_or_else(|e| panic!("{var}: {e}"));
            let got = toml::Value::try_from(&c).unwrap();
            let want = match key.kind {
                KeyKind::Bool => toml::Value::Boolean(true),
                KeyKind::Integer => toml::Value::Integer(7),
                KeyKind::Float => toml::Value::Float(0.5),
                KeyKind::List => toml::Value::Array(vec!["a".into(), "b".into()]),
                _ => toml::Value::String(value.into()),
            };
            assert_eq!(get(&got, &key.path), Some(&want), "{var} did not reach {}", key.path);
        }
    }

    // A bad value is refused with the variable's name and the key it sets.
    #[test]
    fn bad_value_names_the_variable() {
        let cases = [
            ("DATANET_NET_PEERS_MAX", "many", "net.peers_max"),
            ("DATANET_NET_PEERS_MAX", "-1", "net.peers_max"),
            ("DATANET_PEERS_MAX", "99999999999", "net.peers_max"),
            ("DATANET_NET_PUBLIC", "maybe", "net.public"),
            ("DATANET_EPOCH_TRAIN_THREADS", "1.5", "epoch.train_threads"),
            ("DATANET_NET_LISTEN", "[1, 2", "net.listen"),
            ("DATANET_NET_SEEDS", "[1, 2]", "net.seeds"),
        ];
        for (var, value, key) in cases {
            let e = apply(&[(var, value)]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Env { var: v, key: k, .. } if v == var && k == key),
                "{var}={value}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(var) && msg.contains(key), "{msg}");
        }
    }

    // Lists take commas or a TOML array, optional keys are unset by an empty value, the older
    // names still work and the full name wins over one.
    #[test]
    fn values_aliases_and_precedence() {
        let c = apply(&[
            ("DATANET_NET_SEEDS", r#"["/ip4/1.2.3.4/tcp/1/p2p/x", "y"]"#),
            ("DATANET_LISTEN", "/ip4/127.0.0.1/tcp/7000, /ip4/127.0.0.1/udp/7000/quic-v1"),
            ("DATANET_PEERS_MAX", "3"),
            ("DATANET_NET_PEERS_MAX", "5"),
            ("DATANET_API_METRICS_TOKEN_FILE", "metrics.token"),
            ("DATANET_PUBLIC", "yes"),
        ])
        .unwrap();
        assert_eq!(c.net.seeds, ["/ip4/1.2.3.4/tcp/1/p2p/x", "y"]);
        assert_eq!(c.net.listen.len(), 2);
        assert_eq!(c.net.peers_max, 5);
        assert!(c.net.public);
        assert_eq!(c.api.metrics_token_file.as_deref(), Some(std::path::Path::new("metrics.token")));
        let mut file = Config::default();
        file.net.seeds_file = Some("config/seeds.toml".into());
        let c = overlay(&file, |k| (k == "DATANET_NET_SEEDS_FILE").then(String::new)).unwrap();
        assert_eq!(c.net.seeds_file, None);
    }

    // README's configuration section lists every variable and every older name.
    #[test]
    fn readme_lists_every_variable() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let keys = keys();
        let names = keys.iter().map(ConfigKey::env_var).chain(ALIASES.iter().map(|(n, _)| n.to_string()));
        for name in names {
            let listed = readme.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w == name);
            assert!(listed, "README.md does not list {name}");
        }
    }

    // `datanet run --help` lists every variable.
    #[test]
    fn help_lists_every_variable() {
        let h = help();
        for k in keys() {
            assert!(h.contains(&k.env_var()), "{} missing from the help", k.env_var());
        }
        assert!(h.contains("DATANET_NET_PEERS_MAX") && h.contains("default 64"), "{h}");
    }
}
