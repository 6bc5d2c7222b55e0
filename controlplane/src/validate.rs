//! Checks on the shape of command fields, independent of the state.

use crate::limits::{LABELS_MAX, LABEL_KEY_LEN_MAX, LABEL_VALUE_LEN_MAX, NAME_LEN_MAX, PATH_LEN_MAX};
use crate::model::Labels;
use crate::rejection::Rejection;

/// A resource name: 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn name(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > NAME_LEN_MAX {
        return Err(Rejection::invalid(
            field,
            format!("must be 1 to {NAME_LEN_MAX} characters, got {}", value.len()),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(Rejection::invalid(field, format!("{value:?} may hold only a-z, 0-9 and '-'")));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(Rejection::invalid(field, format!("{value:?} may not start or end with '-'")));
    }
    Ok(())
}

/// Free text of at most `max` bytes without control characters.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<(), Rejection> {
    if value.len() < min || value.len() > max {
        return Err(Rejection::invalid(field, format!("must be {min} to {max} bytes, got {}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::invalid(field, "may not contain control characters"));
    }
    Ok(())
}

/// An identifier made of printable ASCII without spaces (principals, request ids).
pub fn token(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > max {
        return Err(Rejection::invalid(field, format!("must be 1 to {max} characters, got {}", value.len())));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::invalid(field, "may hold only printable ASCII without spaces"));
    }
    Ok(())
}

/// An absolute, normalized path on the host.
pub fn path(field: &str, value: &str) -> Result<(), Rejection> {
    text(field, value, 1, PATH_LEN_MAX)?;
    if !value.starts_with('/') {
        return Err(Rejection::invalid(field, format!("{value:?} is not an absolute path")));
    }
    if value.split('/').any(|part| part == "." || part == "..") || value.contains("//") {
        return Err(Rejection::invalid(field, format!("{value:?} is not a normalized path")));
    }
    Ok(())
}

/// Labels: at most 32; keys `[a-z0-9-._/]` (1-63), values `[A-Za-z0-9-._]` (0-63).
pub fn labels(field: &str, labels: &Labels) -> Result<(), Rejection> {
    if labels.len() > LABELS_MAX {
        return Err(Rejection::invalid(field, format!("at most {LABELS_MAX} labels, got {}", labels.len())));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= LABEL_KEY_LEN_MAX
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._/".contains(&b));
        if !key_ok {
            return Err(Rejection::invalid(
                field,
                format!("label key {k:?} must be 1 to {LABEL_KEY_LEN_MAX} of [a-z0-9-._/]"),
            ));
        }
        let value_ok = v.len() <= LABEL_VALUE_LEN_MAX
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !value_ok {
            return Err(Rejection::invalid(
                field,
                format!("label {k}={v:?}: values are 0 to {LABEL_VALUE_LEN_MAX} of [A-Za-z0-9-._]"),
            ));
        }
    }
    Ok(())
}

/// A number within `min..=max`.
pub fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Rejection> {
    if value < min || value > max {
        return Err(Rejection::invalid(field, format!("must be {min} to {max}, got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("n", "web-1").is_ok());
        assert!(name("n", &"a".repeat(63)).is_ok());
        for bad in ["", "Web", "a_b", "-a", "a-", "a b", "é", &"a".repeat(64)] {
            assert!(name("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(path("p", "/var/lib/drover/kernel").is_ok());
        for bad in ["", "relative", "/a/../b", "/a/./b", "/a//b", "/a\0b"] {
            assert!(path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_rules() {
        let ok: Labels = [("zone".into(), "eu-1".into()), ("disk/ssd".into(), String::new())].into();
        assert!(labels("l", &ok).is_ok());
        let bad_key: Labels = [("Zone".into(), "x".into())].into();
        assert!(labels("l", &bad_key).is_err());
        let bad_value: Labels = [("zone".into(), "a b".into())].into();
        assert!(labels("l", &bad_value).is_err());
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(labels("l", &many).is_err());
    }
}
