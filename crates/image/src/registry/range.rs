//! Byte ranges of a blob: what a lazily started workspace reads, a span at
//! a time, before the blob is downloaded whole.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};

use super::client::{content_range_start, describe};
use super::{Reference, RegistryClient, RegistryError};
use cvmd_digest::Digest;

/// The largest span one request may ask for: a lazy read holds it in
/// memory, so it is bounded like every other answer.
pub const MAX_SPAN: u64 = 64 << 20;

impl RegistryClient {
    /// Bytes `start .. start + len` of a blob. A registry that ignores the
    /// Range (a 200 with the whole blob), answers another range or sends
    /// more or fewer bytes is refused: the caller falls back to a full pull.
    pub async fn get_blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("bytes {start}+{len} of blob {digest} of {r}");
        if len == 0 || len > MAX_SPAN {
            return Err(RegistryError::Invalid {
                what,
                why: format!("a span must hold 1 to {MAX_SPAN} bytes"),
            });
        }
        let end = start
            .checked_add(len - 1)
            .ok_or_else(|| RegistryError::Invalid {
                what: what.clone(),
                why: "the span runs past 2^64".into(),
            })?;
        let path = format!("v2/{}/blobs/{digest}", r.repository);
        let mut headers = HeaderMap::new();
        headers.insert(
            RANGE,
            HeaderValue::from_str(&format!("bytes={start}-{end}")).expect("ascii"),
        );
        let (response, _) = self
            .first_success_on(&self.blobs, r, Method::GET, &path, headers, &what)
            .await?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(RegistryError::Invalid {
                what,
                why: format!(
                    "the registry answered {} instead of 206: it does not serve byte ranges",
                    response.status().as_u16()
                ),
            });
        }
        let from = content_range_start(response.headers());
        if from != Some(start) {
            return Err(RegistryError::Invalid {
                what,
                why: "the answer's Content-Range does not start where asked".into(),
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Transfer {
                what: what.clone(),
                why: describe(&e),
            })?;
            if out.len() as u64 + chunk.len() as u64 > len {
                return Err(RegistryError::SizeMismatch {
                    what,
                    expected: len,
                    actual: out.len() as u64 + chunk.len() as u64,
                });
            }
            out.extend_from_slice(&chunk);
        }
        if out.len() as u64 != len {
            return Err(RegistryError::SizeMismatch {
                what,
                expected: len,
                actual: out.len() as u64,
            });
        }
        Ok(out.into())
    }
}
