//! The checks of a TOC entry's name and fields, each refusal naming the
//! entry as the TOC spells it.

use super::{TocError, WHITEOUT_PREFIX};
use cvmd_digest::Digest;

/// `name` made relative and clean, `""` for the root.
pub(super) fn normalize(name: &str) -> Result<String, TocError> {
    let bad = |why| TocError::BadName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.contains('\0') {
        return Err(bad("it contains NUL"));
    }
    if name.starts_with('/') {
        return Err(bad("it is absolute"));
    }
    let mut rest = name;
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    if rest == "." || rest.is_empty() {
        return Ok(String::new());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let comps: Vec<&str> = rest.split('/').collect();
    for (i, comp) in comps.iter().enumerate() {
        match *comp {
            "" => return Err(bad("it has an empty component")),
            "." => return Err(bad("it has a '.' component")),
            ".." => return Err(bad("it has a '..' component")),
            // As the unpacker refuses them: a whiteout reaching into a
            // subdirectory, or naming nothing.
            c if c.starts_with(WHITEOUT_PREFIX) && i + 1 < comps.len() => {
                return Err(bad("a whiteout (.wh.) is not its last component"))
            }
            ".wh." | ".wh.." | ".wh..." => return Err(bad("it is a whiteout of nothing")),
            _ => {}
        }
    }
    Ok(rest.to_string())
}

pub(super) fn parent_of(path: &str) -> Option<&str> {
    if path.is_empty() {
        None
    } else {
        Some(path.rfind('/').map_or("", |i| &path[..i]))
    }
}

pub(super) fn non_negative(name: &str, field: &'static str, v: i64) -> Result<u64, TocError> {
    u64::try_from(v).map_err(|_| TocError::OutOfRange {
        name: name.to_string(),
        field,
        value: i128::from(v),
    })
}

pub(super) fn small<T: TryFrom<u64>>(
    name: &str,
    field: &'static str,
    v: u64,
) -> Result<T, TocError> {
    T::try_from(v).map_err(|_| TocError::OutOfRange {
        name: name.to_string(),
        field,
        value: i128::from(v),
    })
}

pub(super) fn digest_field(name: &str, field: &'static str, v: &str) -> Result<Digest, TocError> {
    v.parse().map_err(|_| TocError::Malformed {
        name: name.to_string(),
        field,
        value: v.chars().take(80).collect(),
    })
}
