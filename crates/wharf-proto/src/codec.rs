//! The one wire codec: the only code in Wharf that calls bincode.
//!
//! Every encoded value starts with a one-byte format version, so that a future change of the
//! encoding can decode old bytes by migrating them forward instead of failing. Used for actor
//! messages between processes and for values stored in sled.

use serde::{de::DeserializeOwned, Serialize};

/// The format version written in front of every encoded value.
pub const FORMAT_V1: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input was empty: not even a version byte.
    #[error("empty input: no format version byte")]
    Empty,
    /// A version this build does not know (written by a newer Wharf).
    #[error("unknown format version {0}: written by a newer Wharf; upgrade this process to read it")]
    UnknownVersion(u8),
    /// The bytes do not decode as the expected type.
    #[error("malformed {type_name}: {source}")]
    Decode {
        /// The type that was expected.
        type_name: &'static str,
        /// What bincode said.
        source: bincode::error::DecodeError,
    },
    /// The value could not be encoded (a type bincode's serde mode does not support).
    #[error("cannot encode {type_name}: {source}")]
    Encode {
        /// The type being encoded.
        type_name: &'static str,
        /// What bincode said.
        source: bincode::error::EncodeError,
    },
}

/// Encodes `value` with the current format version.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(
        |source| CodecError::Encode {
            type_name: std::any::type_name::<T>(),
            source,
        },
    )?;
    Ok(out)
}

/// Decodes bytes written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_V1 => bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map(|(value, _)| value)
            .map_err(|source| CodecError::Decode {
                type_name: std::any::type_name::<T>(),
                source,
            }),
        other => Err(CodecError::UnknownVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, NodeRequest, RepoId, RepoName, RepoRequest};

    #[test]
    fn round_trips_a_request_and_an_error() {
        let request = NodeRequest::Repo {
            id: RepoId(7),
            name: RepoName::parse("acme/app").unwrap(),
            request: RepoRequest::ListBranches,
        };
        let bytes = encode(&request).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<NodeRequest>(&bytes).unwrap(), request);

        let reply: Result<(), ApiError> = Err(ApiError::MergeConflict {
            base: "main".into(),
            head: "topic".into(),
            paths: vec!["a.txt".into()],
        });
        assert_eq!(decode::<Result<(), ApiError>>(&encode(&reply).unwrap()).unwrap(), reply);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<u64>(&[9, 1]), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(
            decode::<NodeRequest>(&[FORMAT_V1, 250, 250]),
            Err(CodecError::Decode { .. })
        ));
    }
}
