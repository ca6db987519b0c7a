//! Layer tar -> directory in overlayfs form, treating the tar as hostile.
//!
//! One layer is unpacked alone into its own (empty, caller-owned) directory,
//! which later becomes an overlay lowerdir. The guarantees:
//! - nothing is created, changed or followed outside `dest` (see `fsops`
//!   for how parents are resolved and `path` for which names are accepted);
//! - OCI whiteouts become overlay whiteouts and opaque xattrs (`whiteout`);
//! - file contents are streamed through a fixed buffer and metered against
//!   [`UnpackOptions::max_unpacked_bytes`], the image's meter and the cache's
//!   free-space reserve (`bounds`); header counts, extension bytes, names,
//!   xattrs and deferred directory metadata by `limits`, so memory stays
//!   bounded whatever the layer holds; after the archive ends the reader is
//!   drained to EOF so the caller's digest covers every byte.
//!
//! Decisions, for reviewers:
//! - names: leading `/` stripped; `..` cleaned lexically and accepted while
//!   it stays inside (`a/../b` is `b`), refused once it climbs out (`../x`,
//!   `/../x`);
//! - parents through symlinks written earlier in the layer are followed while
//!   they stay beneath the root (`l -> sub`, `l/x` writes `sub/x`); absolute
//!   symlinks and `..` escapes in a parent are refused (RESOLVE_BENEATH), not
//!   re-rooted;
//! - hardlink targets are member names of this layer (`/etc/passwd` means the
//!   layer's own `etc/passwd`) and must already exist; the link takes the
//!   target inode's metadata;
//! - later entries replace earlier ones at the same name, except dir over dir;
//!   whiteouts never delete same-layer content (OCI), they make a same-layer
//!   dir opaque instead;
//! - `trusted.overlay.*` xattrs inside the tar are dropped: overlayfs would
//!   obey them on a lowerdir.

mod bounds;
mod deferred;
mod error;
mod fsops;
mod guard;
mod kind;
mod limits;
mod member;
mod meta;
mod path;
mod pax;
mod shared;
mod sparse;
mod whiteout;

/// Builds an [`UnpackError`] variant that carries `entry` and `image`.
macro_rules! fail {
    ($image:expr, $entry:expr, $variant:ident $(, $field:ident : $value:expr)* $(,)?) => {
        $crate::unpack::UnpackError::$variant {
            entry: $entry.to_string(),
            image: $image.to_string(),
            $($field: $value,)*
        }
    };
}

mod entry;

#[cfg(test)]
mod tests;

use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use sparse::Dense;

pub use bounds::{parse_size, ImageMeter, Reserve};
pub use error::UnpackError;
pub use limits::UnpackLimits;

/// Caps what the tar crate reads to find the next header. In raw mode that is
/// one header block, the data of the previous member having been read; the
/// bound stays as a backstop. Extension data is bounded by
/// [`UnpackLimits`].
const HEADER_BUDGET: u64 = 8 << 20;

/// Tar members are laid out in 512-byte blocks.
const BLOCK: u64 = 512;

/// How to unpack one layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Reference of the image being unpacked, used in error messages.
    pub image: String,
    /// The layer (its blob digest), used in error messages.
    pub layer: String,
    /// Abort when the layer's unpacked file contents exceed this many bytes
    /// (gzip-bomb bound). 0 = unlimited. Also bounds data after the
    /// end-of-archive marker.
    pub max_unpacked_bytes: u64,
    /// Apply ownership from the tar headers (true when root).
    pub preserve_ownership: bool,
    /// The image's unpacked bytes over all its layers, shared by the
    /// layers of one pull; None: no per-image bound.
    pub image_meter: Option<std::sync::Arc<ImageMeter>>,
    /// Space kept free on the destination's file system; None: none.
    pub cache_reserve: Option<Reserve>,
    /// Header counts, extension bytes and deferred-metadata memory.
    pub limits: UnpackLimits,
    /// The layer is eStargz (its descriptor carries the TOC digest
    /// annotation): its root-level `stargz.index.json` and landmark files
    /// are format metadata, skipped so the unpacked tree is the one its TOC
    /// describes (and a lazy mount of it shows).
    pub skip_estargz_metadata: bool,
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackStats {
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Bytes of regular file contents written.
    pub file_bytes: u64,
    /// Device nodes not created because mknod was not permitted.
    pub skipped_devices: u64,
    /// Xattrs dropped (`trusted.overlay.*`) or refused by the host (EPERM,
    /// EOPNOTSUPP): counted, logged once per layer with an example.
    pub skipped_xattrs: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Devices and fifos created.
    pub nodes: u64,
    /// Whiteout devices created.
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque_dirs: u64,
    /// Bytes drained after the end-of-archive marker.
    pub trailing_bytes: u64,
}

/// Unpacks the decompressed layer `tar_stream` into `dest`, an existing
/// empty directory, in overlayfs form. On error `dest` holds a partial layer
/// that the caller must discard.
pub fn unpack_layer<R: Read>(
    tar_stream: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    unpack(tar_stream, dest, opts).map_err(|e| e.or_no_space(&opts.layer))
}

fn unpack<R: Read>(
    tar_stream: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let span = tracing::info_span!("unpack", image = %opts.image, dest = %dest.display());
    let _enter = span.enter();
    let started = Instant::now();

    let root = fsops::Root::open(dest).map_err(|source| UnpackError::OpenDest {
        dest: dest.display().to_string(),
        image: opts.image.clone(),
        source,
    })?;
    let fs = std::fs::File::open(dest).map_err(|source| UnpackError::OpenDest {
        dest: dest.display().to_string(),
        image: opts.image.clone(),
        source,
    })?;
    let (guarded, budget) = guard::Guarded::new(tar_stream);
    let stream = shared::Shared::new(guarded);
    let mut archive = tar::Archive::new(stream.clone());
    let mut unpacker = entry::Unpacker::new(root, fs, opts);
    let read_err = |after: &str, source| UnpackError::Read {
        after: after.to_string(),
        image: opts.image.clone(),
        source,
    };
    let ext_err = |after: &str, reason: member::ExtError| UnpackError::Extension {
        after: after.to_string(),
        image: opts.image.clone(),
        reason: reason.to_string(),
    };

    let mut last = String::new();
    // `entries` borrows the archive, which must be free again to drain.
    {
        // Raw: extension headers are parsed here (`member`, `pax`), not by
        // the crate, whose PAX parsing splits records at newlines.
        let mut entries = archive.entries().map_err(|e| read_err(&last, e))?.raw(true);
        let mut pending = member::Pending::default();
        let (mut headers, mut ext_layer, mut ext_member) = (0u64, 0u64, 0u64);
        let limit = |at: String, broke: limits::Broke| UnpackError::Limit {
            at,
            image: opts.image.clone(),
            layer: opts.layer.clone(),
            broke: broke.to_string(),
        };
        let after = |last: &str| format!("the header after entry {last:?}");
        loop {
            budget.set(HEADER_BUDGET);
            let next = entries.next();
            budget.set(u64::MAX);
            let mut entry = match next {
                None if pending.is_empty() => break,
                None => return Err(ext_err(&last, member::ExtError::Dangling)),
                Some(Ok(entry)) => entry,
                Some(Err(_)) if budget.tripped() => {
                    return Err(UnpackError::HeaderTooLarge {
                        after: last,
                        image: opts.image.clone(),
                        limit: HEADER_BUDGET,
                    })
                }
                Some(Err(e)) => return Err(read_err(&last, e)),
            };
            headers += 1;
            if headers > opts.limits.headers {
                let broke = limits::Broke::Headers {
                    limit: opts.limits.headers,
                };
                return Err(limit(after(&last), broke));
            }
            if let Some(ext) = member::extension_of(entry.header()) {
                let size = entry.size();
                ext_layer = ext_layer.saturating_add(size);
                if ext_layer > opts.limits.ext_bytes_per_layer {
                    let broke = limits::Broke::ExtLayer {
                        limit: opts.limits.ext_bytes_per_layer,
                    };
                    return Err(limit(after(&last), broke));
                }
                // One header over the bound is refused unread, several
                // that add up to it once read.
                let data = read_extension(&mut entry, &last, opts)?;
                ext_member = ext_member.saturating_add(size);
                if ext_member > opts.limits.ext_bytes_per_member {
                    let broke = limits::Broke::ExtMember {
                        had: ext_member,
                        limit: opts.limits.ext_bytes_per_member,
                    };
                    return Err(limit(after(&last), broke));
                }
                pending.add(ext, data).map_err(|e| ext_err(&last, e))?;
                continue;
            }
            let header = entry.header().clone();
            ext_member = 0;
            let member = pending.apply(&header).map_err(|e| ext_err(&last, e))?;
            limits::check_member(&member.path, member.link.as_deref(), &member.pax).map_err(
                |broke| {
                    let at = format!("entry {:?}", limits::shown(&member.path, 256));
                    limit(at, broke)
                },
            )?;
            last = String::from_utf8_lossy(&member.path).into_owned();
            if header.entry_type().is_gnu_sparse() {
                // The map's extension blocks precede the stored data.
                let segments = sparse::read_map(&header, &mut stream.clone()).map_err(|e| {
                    UnpackError::Sparse {
                        entry: last.clone(),
                        image: opts.image.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let size = sparse::Expand::len(&segments);
                let mut data = sparse::Expand::new(segments, &mut entry);
                unpacker.entry(&header, &member, &mut data, size, &last)?;
                unpacker.drain_entry(&mut data, &last)?;
                unpacker.drain_entry(&mut Dense(&mut entry), &last)?;
            } else if member.size == entry.size() {
                let mut data = Dense(&mut entry);
                unpacker.entry(&header, &member, &mut data, member.size, &last)?;
                unpacker.drain_entry(&mut data, &last)?;
            } else {
                // Header size 0, PAX size real (see `shared`): the crate
                // reads nothing, the data and its padding are read here.
                let mut data = Dense(stream.clone().take(member.size));
                unpacker.entry(&header, &member, &mut data, member.size, &last)?;
                unpacker.drain_entry(&mut data, &last)?;
                let mut padding = Dense(stream.clone().take(member.size.wrapping_neg() % BLOCK));
                unpacker.drain_entry(&mut padding, &last)?;
                // The crate reports a truncated member when it skips to the
                // next header; these bytes bypassed it.
                if data.0.limit() != 0 || padding.0.limit() != 0 {
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(read_err(&last, eof));
                }
            }
        }
    }
    let mut stats = unpacker.finish()?;

    // The caller hashes the stream as it passes; the tar crate stops at the
    // first zero block, so the rest (second zero block, record padding)
    // must still be read.
    budget.set(match opts.max_unpacked_bytes {
        0 => u64::MAX,
        n => n,
    });
    let mut rest = archive.into_inner();
    stats.trailing_bytes = match io::copy(&mut rest, &mut io::sink()) {
        Ok(n) => n,
        Err(_) if budget.tripped() => {
            return Err(UnpackError::TrailingData {
                image: opts.image.clone(),
                limit: opts.max_unpacked_bytes,
            })
        }
        Err(e) => return Err(read_err(&last, e)),
    };

    tracing::info!(
        entries = stats.entries,
        file_bytes = stats.file_bytes,
        skipped_devices = stats.skipped_devices,
        skipped_xattrs = stats.skipped_xattrs,
        elapsed_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
        "layer unpacked"
    );
    Ok(stats)
}

/// Reads the data of a GNU long name / PAX header, refusing one over
/// the per-member bound before reading it.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    after: &str,
    opts: &UnpackOptions,
) -> Result<Vec<u8>, UnpackError> {
    let size = entry.size();
    if size > opts.limits.ext_bytes_per_member {
        return Err(UnpackError::HeaderTooLarge {
            after: after.to_string(),
            image: opts.image.clone(),
            limit: opts.limits.ext_bytes_per_member,
        });
    }
    // Bounded above, so the capacity is at most the limit.
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .read_to_end(&mut data)
        .map_err(|source| UnpackError::Read {
            after: after.to_string(),
            image: opts.image.clone(),
            source,
        })?;
    Ok(data)
}
