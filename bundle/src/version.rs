//! Bundle versions: dotted non-negative integers (`42`, `2026.11.22.1`), compared field by
//! field as numbers. When one version is a prefix of the other, the longer one is newer
//! (`1.2` < `1.2.0`), which is also how systemd-boot orders entries' `version` fields made
//! only of digits and dots.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Most fields a version may have.
const MAX_FIELDS: usize = 16;

/// A parsed bundle version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    fields: Vec<u64>,
    text: String,
}

impl Version {
    /// The version exactly as written (leading zeros and all).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid version '{s}': use dotted numbers such as 42 or 2026.11.22.1");
        if s.is_empty() || s.len() > 128 {
            return Err(bad());
        }
        let mut fields = Vec::new();
        for part in s.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            fields.push(part.parse::<u64>().map_err(|_| bad())?);
        }
        if fields.len() > MAX_FIELDS {
            return Err(bad());
        }
        Ok(Version {
            fields,
            text: s.to_string(),
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Vec's lexicographic order is exactly "field by field, then longer is newer".
        self.fields.cmp(&other.fields)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn numeric_not_lexical() {
        assert!(v("10") > v("9"));
        assert!(v("2026.11.22.10") > v("2026.11.22.9"));
        assert!(v("2027.1.1.1") > v("2026.12.31.99"));
        assert_eq!(v("007").cmp(&v("7")), Ordering::Equal);
        assert!(v("1.2.0") > v("1.2"));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "1..2",
            "1.a",
            "v1",
            "1.2-rc1",
            " 1",
            "1.",
            "99999999999999999999999",
        ] {
            assert!(s.parse::<Version>().is_err(), "{s:?} accepted");
        }
    }
}
