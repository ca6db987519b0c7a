//! PAX extended header records, parsed by their length prefix (pure).
//!
//! POSIX pax ("pax Extended Header"): the data of an `x`/`g` member is a
//! sequence of records `"%d %s=%s\n"`, where the decimal length counts the
//! whole record, its own digits and the newline included. The value may hold
//! any byte, newlines and NULs included: binary xattrs
//! (`SCHILY.xattr.security.capability`) and GNU tar's multi-line text ACLs
//! (`SCHILY.acl.access`) do. Splitting at newlines, as the tar crate's
//! `PaxExtensions` does, misreads them, so records are cut by length only.
//! The rules follow Go's archive/tar `parsePAXRecord`, which wrote most
//! layers we meet.

/// One `key=value` record, borrowed from the header data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Why PAX header data is malformed; `offset` is where the record starts in
/// the header data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PaxError {
    #[error("PAX record at byte {offset} does not start with a decimal length and a space")]
    NoLength { offset: usize },
    #[error("PAX record at byte {offset} claims a length too large to be real")]
    LengthOverflow { offset: usize },
    #[error(
        "PAX record at byte {offset} claims length {len}, shorter than its own \
         length prefix, key and `=`"
    )]
    LengthTooSmall { offset: usize, len: usize },
    #[error(
        "PAX record at byte {offset} claims length {len} but only {left} bytes of \
         header data are left"
    )]
    Overrun {
        offset: usize,
        len: usize,
        left: usize,
    },
    #[error("PAX record at byte {offset} does not end with a newline where its length says")]
    NoNewline { offset: usize },
    #[error("PAX record at byte {offset} has no `=` between keyword and value")]
    NoEquals { offset: usize },
    #[error("PAX record at byte {offset} has an empty keyword")]
    EmptyKey { offset: usize },
    #[error("PAX record at byte {offset} has a NUL byte in its keyword")]
    NulInKey { offset: usize },
    #[error("PAX record {key:?} at byte {offset} has a NUL byte in its value")]
    NulInValue { offset: usize, key: String },
}

/// Keywords whose values are names, where a NUL would be cut short by every
/// C consumer (Go's archive/tar `validPAXRecord` refuses them too).
const NAME_KEYS: [&[u8]; 4] = [b"path", b"linkpath", b"uname", b"gname"];

/// Parses the whole data of a PAX header into its records, in order.
pub(super) fn parse_records(data: &[u8]) -> Result<Vec<Record<'_>>, PaxError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let (record, len) = parse_one(&data[offset..], offset)?;
        records.push(record);
        offset += len;
    }
    Ok(records)
}

/// Parses the record at the start of `rest`; returns it and its length.
fn parse_one(rest: &[u8], offset: usize) -> Result<(Record<'_>, usize), PaxError> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b' ') {
        return Err(PaxError::NoLength { offset });
    }
    let mut len: usize = 0;
    for &d in &rest[..digits] {
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(d - b'0')))
            .ok_or(PaxError::LengthOverflow { offset })?;
    }
    // Digits, space, '=' and newline at least (an empty key is caught below).
    if len < digits + 3 {
        return Err(PaxError::LengthTooSmall { offset, len });
    }
    if len > rest.len() {
        return Err(PaxError::Overrun {
            offset,
            len,
            left: rest.len(),
        });
    }
    let body = match rest[digits + 1..len].split_last() {
        Some((b'\n', body)) => body,
        _ => return Err(PaxError::NoNewline { offset }),
    };
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .ok_or(PaxError::NoEquals { offset })?;
    let (key, value) = (&body[..eq], &body[eq + 1..]);
    if key.is_empty() {
        return Err(PaxError::EmptyKey { offset });
    }
    if key.contains(&0) {
        return Err(PaxError::NulInKey { offset });
    }
    if NAME_KEYS.contains(&key) && value.contains(&0) {
        return Err(PaxError::NulInValue {
            offset,
            key: String::from_utf8_lossy(key).into_owned(),
        });
    }
    Ok((Record { key, value }, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"%d %s=%s\n"` with the self-counting length.
    fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len += 1;
        }
        let mut r = format!("{len} ").into_bytes();
        r.extend_from_slice(key);
        r.push(b'=');
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

    fn pairs(data: &[u8]) -> Pairs<'_> {
        let records = parse_records(data).unwrap();
        records.iter().map(|r| (r.key, r.value)).collect()
    }

    #[test]
    fn values_may_hold_newlines_equals_and_nuls() {
        let cap =
            b"\x01\x00\x00\x02\x0a\x20\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let acl = b"user::rwx\ngroup::r-x\ngroup:adm:r-x\nmask::r-x\nother::r-x\n";
        let mut data = record(b"SCHILY.xattr.security.capability", cap);
        data.extend(record(b"SCHILY.acl.access", acl));
        data.extend(record(b"SCHILY.xattr.user.eq", b"a=b=c"));
        data.extend(record(b"path", b"dir/with\nnewline"));
        let want: Pairs = vec![
            (b"SCHILY.xattr.security.capability", cap),
            (b"SCHILY.acl.access", acl),
            (b"SCHILY.xattr.user.eq", b"a=b=c"),
            (b"path", b"dir/with\nnewline"),
        ];
        assert_eq!(pairs(&data), want);
    }

    #[test]
    fn a_value_that_looks_like_a_record_stays_a_value() {
        // Split at newlines, this value would smuggle in a `path` record.
        let data = record(b"SCHILY.xattr.user.x", b"\n9 path=a\n");
        let want: Pairs = vec![(b"SCHILY.xattr.user.x", b"\n9 path=a\n")];
        assert_eq!(pairs(&data), want);
    }

    #[test]
    fn empty_data_and_empty_values_are_fine() {
        assert_eq!(pairs(b""), Pairs::new());
        let want: Pairs = vec![(b"k", b"")];
        assert_eq!(pairs(b"5 k=\n"), want);
        // The length may span the digit-count boundary (9 -> 10).
        let want: Pairs = vec![(b"kk", b"vvv")];
        assert_eq!(pairs(b"10 kk=vvv\n"), want);
    }

    #[test]
    fn hostile_records_are_refused_with_their_reason() {
        use PaxError::*;
        let cases: Vec<(&[u8], PaxError)> = vec![
            (
                b"99 path=a\n",
                Overrun {
                    offset: 0,
                    len: 99,
                    left: 10,
                },
            ),
            (b"0 k=v\n", LengthTooSmall { offset: 0, len: 0 }),
            (b"3 k=v\n", LengthTooSmall { offset: 0, len: 3 }),
            (b"x k=v\n", NoLength { offset: 0 }),
            (b" 6 k=v\n", NoLength { offset: 0 }),
            (b"6k=v\n", NoLength { offset: 0 }),
            (b"+6 k=v\n", NoLength { offset: 0 }),
            (b"6 kv\n\n", NoEquals { offset: 0 }),
            (b"6 k=vv", NoNewline { offset: 0 }),
            (b"5 k=v\n", NoNewline { offset: 0 }),
            (b"5 =v\n", EmptyKey { offset: 0 }),
            (b"7 k\0=v\n", NulInKey { offset: 0 }),
            (
                b"9 path=\0\n",
                NulInValue {
                    offset: 0,
                    key: "path".into(),
                },
            ),
            (
                b"99999999999999999999999999 k=v\n",
                LengthOverflow { offset: 0 },
            ),
            (
                b"18446744073709551615 k=v\n",
                Overrun {
                    offset: 0,
                    len: usize::MAX,
                    left: 25,
                },
            ),
            // The second record is the bad one: its offset is reported.
            (
                b"6 k=v\n7 k=v\n",
                Overrun {
                    offset: 6,
                    len: 7,
                    left: 6,
                },
            ),
            // Trailing NUL padding is not a record.
            (b"6 k=v\n\0\0", NoLength { offset: 6 }),
        ];
        for (data, want) in cases {
            assert_eq!(
                parse_records(data).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn errors_read_as_one_line_naming_the_fault() {
        let err = parse_records(b"99 path=a\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "PAX record at byte 0 claims length 99 but only 10 bytes of header data are left"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn nul_is_allowed_in_xattr_values() {
        let data = record(b"SCHILY.xattr.user.bin", b"\0\0");
        let want: Pairs = vec![(b"SCHILY.xattr.user.bin", b"\0\0")];
        assert_eq!(pairs(&data), want);
    }
}
