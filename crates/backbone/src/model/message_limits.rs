//! What Pub/Sub accepts in one message
//! (<https://cloud.google.com/pubsub/quotas#resource_limits>). The emulator
//! enforces none of it unless patched (`scripts/emulator-patch/`), and real
//! Pub/Sub answers a message over them with `INVALID_ARGUMENT` — which a
//! publisher that retries would retry forever. So every message the daemon
//! builds is kept within them (`envelope`), and the publisher checks them
//! itself before anything is sent ([`check`]).

use std::collections::HashMap;

pub use super::limits::PUBSUB_MESSAGE_MAX_BYTES as MESSAGE_MAX_BYTES;

/// Attributes per message.
pub const MAX_ATTRIBUTES: usize = 100;
/// An attribute key, in bytes.
pub const ATTRIBUTE_KEY_MAX_BYTES: usize = 256;
/// An attribute value, in bytes.
pub const ATTRIBUTE_VALUE_MAX_BYTES: usize = 1024;
/// An ordering key, in bytes.
pub const ORDERING_KEY_MAX_BYTES: usize = 1024;

/// Why Pub/Sub would refuse a message. Permanent for that message: sending
/// it again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    #[error("the message has {count} attributes; Pub/Sub accepts at most {MAX_ATTRIBUTES}")]
    TooManyAttributes { count: usize },
    #[error(
        "attribute key `{key}` is {len} bytes; Pub/Sub accepts at most {ATTRIBUTE_KEY_MAX_BYTES}"
    )]
    KeyTooLong { key: String, len: usize },
    #[error(
        "attribute `{key}` is {len} bytes; Pub/Sub accepts values of at most {ATTRIBUTE_VALUE_MAX_BYTES}"
    )]
    ValueTooLong { key: String, len: usize },
    #[error("the ordering key is {len} bytes; Pub/Sub accepts at most {ORDERING_KEY_MAX_BYTES}")]
    OrderingKeyTooLong { len: usize },
    #[error("the message is {size} bytes; Pub/Sub accepts at most {MESSAGE_MAX_BYTES}")]
    TooLarge { size: usize },
}

/// The bytes a message counts against [`MESSAGE_MAX_BYTES`]: its data, every
/// attribute key and value, and its ordering key.
pub fn message_size(
    data_len: usize,
    attributes: &HashMap<String, String>,
    ordering_key: &str,
) -> usize {
    data_len
        + ordering_key.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Whether one attribute fits on its own.
pub fn attribute_fits(key: &str, value: &str) -> bool {
    key.len() <= ATTRIBUTE_KEY_MAX_BYTES && value.len() <= ATTRIBUTE_VALUE_MAX_BYTES
}

/// The first limit the message breaks, if any.
pub fn check(
    data_len: usize,
    attributes: &HashMap<String, String>,
    ordering_key: &str,
) -> Result<(), OverLimit> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(OverLimit::TooManyAttributes {
            count: attributes.len(),
        });
    }
    // Sorted, so the error names the same attribute every time.
    let mut keys: Vec<&String> = attributes.keys().collect();
    keys.sort_unstable();
    for k in keys {
        let v = &attributes[k];
        if k.len() > ATTRIBUTE_KEY_MAX_BYTES {
            return Err(OverLimit::KeyTooLong {
                key: truncate(k, 64),
                len: k.len(),
            });
        }
        if v.len() > ATTRIBUTE_VALUE_MAX_BYTES {
            return Err(OverLimit::ValueTooLong {
                key: truncate(k, 64),
                len: v.len(),
            });
        }
    }
    if ordering_key.len() > ORDERING_KEY_MAX_BYTES {
        return Err(OverLimit::OrderingKeyTooLong {
            len: ordering_key.len(),
        });
    }
    let size = message_size(data_len, attributes, ordering_key);
    if size > MESSAGE_MAX_BYTES {
        return Err(OverLimit::TooLarge { size });
    }
    Ok(())
}

/// Truncates on a char boundary so the attribute stays valid UTF-8.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(n: usize) -> HashMap<String, String> {
        (0..n).map(|i| (format!("k{i:03}"), "v".into())).collect()
    }

    #[test]
    fn the_limits_as_production_applies_them() {
        assert_eq!(check(10, &attrs(100), "k"), Ok(()));
        assert_eq!(
            check(10, &attrs(101), ""),
            Err(OverLimit::TooManyAttributes { count: 101 })
        );
        let long_value = HashMap::from([("a".to_string(), "é".repeat(513))]);
        assert_eq!(
            check(0, &long_value, ""),
            Err(OverLimit::ValueTooLong {
                key: "a".into(),
                len: 1026
            })
        );
        let at_limit = HashMap::from([("k".repeat(256), "v".repeat(1024))]);
        assert_eq!(check(0, &at_limit, ""), Ok(()));
        let long_key = HashMap::from([("k".repeat(257), "v".into())]);
        assert!(matches!(
            check(0, &long_key, ""),
            Err(OverLimit::KeyTooLong { len: 257, .. })
        ));
        assert_eq!(
            check(0, &HashMap::new(), &"o".repeat(1025)),
            Err(OverLimit::OrderingKeyTooLong { len: 1025 })
        );
        assert_eq!(check(MESSAGE_MAX_BYTES, &HashMap::new(), ""), Ok(()));
        assert_eq!(
            check(MESSAGE_MAX_BYTES - 1, &attrs(1), ""),
            Err(OverLimit::TooLarge {
                size: MESSAGE_MAX_BYTES + 4
            })
        );
    }
}
