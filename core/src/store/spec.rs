//! A store's specification, with the fields and defaults of datajoint-python 2.3.5's
//! `config.stores[name]` (`settings.get_store_spec`), so `dj.store_config` can print the block a
//! client needs. Secrets (S3 keys) are kept apart from the spec: they are never part of what
//! ordinary roles can read.

use serde_json::{json, Map, Value as Json};

use super::StoreError;

/// Where a store keeps its objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    /// A directory of the server's file system. A relative location is under the data directory.
    File { location: String },
    /// An S3-compatible service. `endpoint` is host:port or a URL.
    S3 { endpoint: String, bucket: String, location: String, secure: bool, region: Option<String> },
}

/// A store as the catalog keeps it (secrets apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub protocol: Protocol,
    pub subfolding: Option<Vec<usize>>,
    pub partition_pattern: Option<String>,
    pub token_length: usize,
    pub hash_prefix: String,
    pub schema_prefix: String,
    pub filepath_prefix: Option<String>,
}

/// Where a file store with a relative location lives: `{data_directory}/{location}/{database}`,
/// a folder per database, so two databases' schemas of one name never share objects (and
/// garbage collection in one never sees the other's).
#[derive(Debug, Clone, PartialEq)]
pub struct Home {
    pub data_directory: String,
    pub database: String,
}

/// S3 credentials, readable only by the extension.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Secrets {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

const COMMON: [&str; 7] = [
    "protocol",
    "subfolding",
    "partition_pattern",
    "token_length",
    "hash_prefix",
    "schema_prefix",
    "filepath_prefix",
];

/// A valid store name: what DataJoint's `<codec@name>` accepts.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::spec(format!("{name:?} is not a store name"), "Store names are identifiers: letters, digits and _, starting with a letter or _, at most 63 characters."))
    }
}

impl Spec {
    /// Parses a spec as `dj.add_store` takes it. S3 keys found in it are moved into the secrets.
    pub fn parse(spec: &Json) -> Result<(Spec, Secrets), StoreError> {
        let m = spec.as_object().ok_or_else(|| {
            StoreError::spec(
                "a store spec is a JSON object",
                "e.g. '{\"protocol\": \"file\", \"location\": \"/data/dj\"}'",
            )
        })?;
        let text = |k: &str| -> Result<Option<String>, StoreError> {
            match m.get(k) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(StoreError::spec(format!("{k} is {other}, not a string"), "")),
            }
        };
        let required = |k: &str| -> Result<String, StoreError> {
            text(k)?.filter(|s| !s.is_empty()).ok_or_else(|| {
                StoreError::spec(
                    format!("the spec has no {k}"),
                    "file stores need location; s3 stores need endpoint, bucket and location.",
                )
            })
        };
        let protocol_name = required("protocol")?.to_ascii_lowercase();
        let allowed: &[&str] = match protocol_name.as_str() {
            "file" => &["location"],
            "s3" => &["endpoint", "bucket", "location", "secure", "region", "access_key", "secret_key"],
            other => {
                return Err(StoreError::spec(
                    format!("protocol {other:?} is not supported"),
                    "Use \"file\" or \"s3\".",
                ));
            }
        };
        if let Some(bad) = m.keys().find(|k| !COMMON.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
        {
            return Err(StoreError::spec(
                format!("{bad:?} is not a key of a {protocol_name} store"),
                format!("Keys: {}.", COMMON.iter().chain(allowed).copied().collect::<Vec<_>>().join(", ")),
            ));
        }
        let mut secrets = Secrets::default();
        let protocol = if protocol_name == "file" {
            Protocol::File { location: required("location")? }
        } else {
            secrets.access_key = text("access_key")?;
            secrets.secret_key = text("secret_key")?;
            let secure = match m.get("secure") {
                None | Some(Json::Null) => true,
                Some(Json::Bool(b)) => *b,
                Some(other) => {
                    return Err(StoreError::spec(format!("secure is {other}, not true or false"), ""))
                }
            };
            let location = text("location")?.ok_or_else(|| {
                StoreError::spec(
                    "the spec has no location",
                    "s3 stores need endpoint, bucket and location (location may be \"\").",
                )
            })?;
            Protocol::S3 {
                endpoint: required("endpoint")?,
                bucket: required("bucket")?,
                location,
                secure,
                region: text("region")?,
            }
        };
        let subfolding = match m.get("subfolding") {
            None | Some(Json::Null) => None,
            Some(Json::Array(a)) => {
                let folds: Option<Vec<usize>> = a
                    .iter()
                    .map(|f| f.as_u64().filter(|n| (1..=26).contains(n)).map(|n| n as usize))
                    .collect();
                match folds {
                    Some(f) if f.iter().sum::<usize>() < 26 && !f.is_empty() => Some(f),
                    _ => {
                        return Err(StoreError::spec(
                            "subfolding is a list of fold lengths (e.g. [2, 2]) shorter than a hash",
                            "",
                        ))
                    }
                }
            }
            Some(other) => return Err(StoreError::spec(format!("subfolding is {other}, not a list"), "")),
        };
        let token_length = match m.get("token_length") {
            None | Some(Json::Null) => 8,
            // datajoint-python clamps to 4..16.
            Some(n) => n
                .as_u64()
                .map(|n| n.clamp(4, 16) as usize)
                .ok_or_else(|| StoreError::spec("token_length is a number", ""))?,
        };
        let spec = Spec {
            protocol,
            subfolding,
            partition_pattern: text("partition_pattern")?,
            token_length,
            hash_prefix: text("hash_prefix")?.unwrap_or_else(|| "_hash".into()),
            schema_prefix: text("schema_prefix")?.unwrap_or_else(|| "_schema".into()),
            filepath_prefix: text("filepath_prefix")?,
        };
        spec.check_prefixes()?;
        if let Protocol::S3 { location, .. } = &spec.protocol {
            if !location.is_empty() {
                super::address::check_relative(location)
                    .map_err(|e| StoreError::spec(format!("location: {}", e.message), ""))?;
            }
        }
        Ok((spec, secrets))
    }

    fn check_prefixes(&self) -> Result<(), StoreError> {
        let mut prefixes = vec![
            ("hash_prefix", self.hash_prefix.trim_matches('/')),
            ("schema_prefix", self.schema_prefix.trim_matches('/')),
        ];
        if let Some(f) = &self.filepath_prefix {
            prefixes.push(("filepath_prefix", f.trim_matches('/')));
        }
        for (name, p) in &prefixes {
            if p.is_empty() && *name != "filepath_prefix" {
                return Err(StoreError::spec(
                    format!("{name} is empty"),
                    "Prefixes keep hash-addressed, schema-addressed and filepath objects apart.",
                ));
            }
            super::address::check_relative(p)
                .map_err(|e| StoreError::spec(format!("{name}: {}", e.message), ""))?;
        }
        // The quarantine is ours alone.
        prefixes.push(("the quarantine", super::address::TRASH));
        for (i, (a, pa)) in prefixes.iter().enumerate() {
            for (b, pb) in &prefixes[i + 1..] {
                let overlap =
                    pa == pb || pa.starts_with(&format!("{pb}/")) || pb.starts_with(&format!("{pa}/"));
                if overlap {
                    return Err(StoreError::spec(
                        format!("{a} {pa:?} and {b} {pb:?} overlap"),
                        "Each kind of object needs its own prefix.",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The spec as the catalog keeps it and `dj.stores` shows it: defaults filled, no secrets.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        match &self.protocol {
            Protocol::File { location } => {
                m.insert("protocol".into(), json!("file"));
                m.insert("location".into(), json!(location));
            }
            Protocol::S3 { endpoint, bucket, location, secure, region } => {
                m.insert("protocol".into(), json!("s3"));
                m.insert("endpoint".into(), json!(endpoint));
                m.insert("bucket".into(), json!(bucket));
                m.insert("location".into(), json!(location));
                m.insert("secure".into(), json!(secure));
                if let Some(r) = region {
                    m.insert("region".into(), json!(r));
                }
            }
        }
        if let Some(f) = &self.subfolding {
            m.insert("subfolding".into(), json!(f));
        }
        if let Some(p) = &self.partition_pattern {
            m.insert("partition_pattern".into(), json!(p));
        }
        m.insert("token_length".into(), json!(self.token_length));
        m.insert("hash_prefix".into(), json!(self.hash_prefix));
        m.insert("schema_prefix".into(), json!(self.schema_prefix));
        if let Some(f) = &self.filepath_prefix {
            m.insert("filepath_prefix".into(), json!(f));
        }
        Json::Object(m)
    }

    /// The store's entry in datajoint-python's `stores` block: a file store's `location`
    /// resolved (see [`Home`]); no region (datajoint-python refuses the key) and no secrets
    /// (clients keep theirs in `.secrets/`).
    pub fn client_config(&self, home: &Home) -> Json {
        let mut j = self.to_json();
        let m = j.as_object_mut().expect("an object");
        if let Protocol::File { location } = &self.protocol {
            m.insert("location".into(), json!(self.file_root(location, home)));
        }
        m.remove("region");
        j
    }

    /// The absolute directory of a file store.
    pub fn file_root(&self, location: &str, home: &Home) -> String {
        if location.starts_with('/') {
            location.to_string()
        } else {
            format!(
                "{}/{}/{}",
                home.data_directory.trim_end_matches('/'),
                location.trim_end_matches('/'),
                home.database
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_spec_gets_datajoint_defaults() {
        let (spec, secrets) = Spec::parse(&json!({"protocol": "file", "location": "/data/dj"})).unwrap();
        assert_eq!(secrets, Secrets::default());
        assert_eq!(
            spec.to_json(),
            json!({"protocol": "file", "location": "/data/dj", "token_length": 8, "hash_prefix": "_hash", "schema_prefix": "_schema"})
        );
        let (rel, _) =
            Spec::parse(&json!({"protocol": "file", "location": "dj_store", "subfolding": [2, 2]})).unwrap();
        let home = Home { data_directory: "/var/lib/pg/".into(), database: "lab".into() };
        assert_eq!(rel.client_config(&home)["location"], json!("/var/lib/pg/dj_store/lab"));
        assert_eq!(rel.subfolding, Some(vec![2, 2]));
    }

    #[test]
    fn s3_secrets_are_kept_apart() {
        let (spec, secrets) = Spec::parse(&json!({
            "protocol": "s3", "endpoint": "127.0.0.1:8333", "bucket": "b", "location": "lab",
            "secure": false, "region": "us-east-1", "access_key": "AK", "secret_key": "SK"
        }))
        .unwrap();
        assert_eq!(secrets.access_key.as_deref(), Some("AK"));
        assert_eq!(secrets.secret_key.as_deref(), Some("SK"));
        let shown = spec.to_json().to_string();
        assert!(!shown.contains("SK") && !shown.contains("AK"), "{shown}");
        let client = spec.client_config(&Home { data_directory: "/x".into(), database: "d".into() });
        assert!(client.get("region").is_none());
        assert_eq!(client["secure"], json!(false));
    }

    #[test]
    fn bad_specs_are_refused() {
        let refuse = |j: Json| Spec::parse(&j).unwrap_err().message;
        assert!(refuse(json!("file")).contains("JSON object"));
        assert!(refuse(json!({"protocol": "ftp", "location": "x"})).contains("not supported"));
        assert!(refuse(json!({"protocol": "file"})).contains("no location"));
        assert!(refuse(json!({"protocol": "file", "location": "/x", "bucket": "b"})).contains("not a key"));
        assert!(refuse(json!({"protocol": "s3", "endpoint": "e", "location": ""})).contains("no bucket"));
        assert!(refuse(
            json!({"protocol": "file", "location": "/x", "hash_prefix": "a", "schema_prefix": "a/b"})
        )
        .contains("overlap"));
        assert!(refuse(json!({"protocol": "file", "location": "/x", "hash_prefix": "../up"}))
            .contains("hash_prefix"));
        assert!(
            refuse(json!({"protocol": "file", "location": "/x", "subfolding": [30]})).contains("subfolding")
        );
        assert!(check_name("a-b").is_err() && check_name("").is_err() && check_name("main_2").is_ok());
    }
}
