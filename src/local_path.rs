//! Serde for local paths in records and control replies. A Unix file name is bytes, JSON text
//! is UTF-8: a path that is valid UTF-8 is written as a plain string (as records always were,
//! so old records load unchanged), any other as `{"bytes": "<hex>"}`, so that a file whose name
//! is not UTF-8 can still be queued, listed and reported instead of breaking the store.
//! Use as `#[serde(with = "crate::local_path")]`. Depends on nothing else in the crate.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Encoded {
    Text(String),
    Bytes { bytes: String },
}

pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    match path.to_str() {
        Some(text) => serializer.serialize_str(text),
        None => Encoded::Bytes {
            bytes: hex::encode(path.as_os_str().as_bytes()),
        }
        .serialize(serializer),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    match Encoded::deserialize(deserializer)? {
        Encoded::Text(text) => Ok(PathBuf::from(text)),
        Encoded::Bytes { bytes } => hex::decode(&bytes)
            .map(|bytes| PathBuf::from(OsString::from_vec(bytes)))
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        #[serde(with = "super")]
        path: PathBuf,
    }

    #[test]
    fn paths_round_trip_and_utf8_ones_stay_plain_strings() {
        let cases: &[(&[u8], &str)] = &[
            (b"/srv/outbox/a.txt", r#"{"path":"/srv/outbox/a.txt"}"#),
            (
                b"/srv/caf\xe9.txt",
                r#"{"path":{"bytes":"2f7372762f636166e92e747874"}}"#,
            ),
        ];
        for (bytes, json) in cases {
            let record = Record {
                path: PathBuf::from(OsString::from_vec(bytes.to_vec())),
            };
            assert_eq!(serde_json::to_string(&record).unwrap(), *json);
            assert_eq!(serde_json::from_str::<Record>(json).unwrap(), record);
        }
    }
}
