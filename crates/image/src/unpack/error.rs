//! Errors of the unpack stage: one variant per failure site, each naming the
//! layer entry and the image so the user can find the offending layer.

use std::io;

/// Why a layer could not be unpacked. `entry` is the member name as written in
/// the tar (lossy UTF-8), `image` the reference from [`super::UnpackOptions`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer destination {dest:?} for image {image:?}: {source}")]
    OpenDest {
        dest: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer of image {image:?} is not a readable tar stream (after entry {after:?}): {source}; \
         the blob may be corrupt or not a layer"
    )]
    Read {
        after: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer of image {image:?} has an extension header (long name or PAX record) over \
         {limit} bytes after entry {after:?}; refusing it as hostile"
    )]
    HeaderTooLarge {
        after: String,
        image: String,
        limit: u64,
    },
    #[error(
        "layer of image {image:?} has a malformed extension header (PAX record or GNU long \
         name) after entry {after:?}: {reason}; the layer is corrupt or hostile"
    )]
    Extension {
        after: String,
        image: String,
        reason: String,
    },
    #[error(
        "layer entry {entry:?} of image {image:?} is a GNU sparse file with a bad sparse map: \
         {reason}; the layer is corrupt or hostile"
    )]
    Sparse {
        entry: String,
        image: String,
        reason: String,
    },
    #[error("layer entry {entry:?} of image {image:?} has an empty or NUL-containing name")]
    InvalidName { entry: String, image: String },
    #[error("layer entry {entry:?} of image {image:?} escapes the layer root")]
    Escapes { entry: String, image: String },
    #[error(
        "layer entry {entry:?} of image {image:?} goes through a symlink that leads outside \
         the layer root (absolute or `..` target); refusing to follow it"
    )]
    ParentOutside { entry: String, image: String },
    #[error(
        "layer entry {entry:?} of image {image:?} goes through a symlink loop or too many \
         symlinks"
    )]
    ParentLoop { entry: String, image: String },
    #[error(
        "layer entry {entry:?} of image {image:?} has a parent that is not a directory \
         (a file, device or dangling symlink written earlier in the layer)"
    )]
    ParentNotDirectory { entry: String, image: String },
    #[error("cannot resolve the parent of layer entry {entry:?} of image {image:?}: {source}")]
    Resolve {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer entry {entry:?} of image {image:?} names the layer root but is not a directory"
    )]
    RootNotDirectory { entry: String, image: String },
    #[error("layer entry {entry:?} of image {image:?} has unsupported tar type {kind:?}")]
    UnsupportedType {
        entry: String,
        image: String,
        kind: char,
    },
    #[error(
        "layer entry {entry:?} of image {image:?} is a malformed whiteout (its name after \
         `.wh.` is empty, `.`, `..` or contains `/`)"
    )]
    BadWhiteout { entry: String, image: String },
    #[error(
        "layer entry {entry:?} of image {image:?} is a hardlink to {target:?}, which escapes \
         the layer root"
    )]
    HardlinkEscapes {
        entry: String,
        target: String,
        image: String,
    },
    #[error(
        "layer entry {entry:?} of image {image:?} is a hardlink to {target:?}, which does not \
         exist earlier in this layer (or is a directory)"
    )]
    HardlinkTargetMissing {
        entry: String,
        target: String,
        image: String,
    },
    #[error("layer entry {entry:?} of image {image:?} is a link without a target name")]
    MissingLinkName { entry: String, image: String },
    #[error(
        "layer {layer} of image {image:?} unpacks to more than {limit} bytes (at entry \
         {entry:?}, sizes as declared, sparse holes included); nothing of it was kept; raise \
         the max_layer_size setting (--max-layer-size, CVMD_MAX_LAYER_SIZE) if the image is \
         trusted"
    )]
    TooLarge {
        entry: String,
        image: String,
        layer: String,
        limit: u64,
    },
    #[error(
        "image {image:?} unpacks to more than {limit} bytes over its layers (layer {layer}, \
         at entry {entry:?}, sizes as declared, sparse holes included); nothing of the layer \
         was kept; raise the max_image_size setting (--max-image-size, CVMD_MAX_IMAGE_SIZE) \
         if the image is trusted"
    )]
    ImageTooLarge {
        entry: String,
        image: String,
        layer: String,
        limit: u64,
    },
    #[error(
        "layer {layer} of image {image:?}: entry {entry:?} needs {need} more bytes, but the \
         cache file system has {avail} free and keeps {keep} ({reserve}) in reserve; nothing \
         of the layer was kept; free space in the cache (cvmd gc --budget, \
         CVMD_CACHE_BUDGET), give the cache a bigger volume, or lower the cache_reserve \
         setting (--cache-reserve, CVMD_CACHE_RESERVE)"
    )]
    CacheReserve {
        entry: String,
        image: String,
        layer: String,
        need: u64,
        avail: u64,
        keep: u64,
        reserve: String,
    },
    #[error(
        "layer {layer} of image {image:?}: {at} {broke}; refusing the layer as hostile \
         (nothing of it was kept)"
    )]
    Limit {
        /// `entry "NAME"`, or where in the stream for extension headers.
        at: String,
        image: String,
        layer: String,
        broke: String,
    },
    #[error(
        "the cache file system ran out of space or inodes unpacking layer {layer} of image \
         {image:?} ({cause}); nothing of the layer was kept; free space in the cache (cvmd gc \
         --budget, CVMD_CACHE_BUDGET) or give the cache a bigger volume, and keep \
         CVMD_CACHE_RESERVE above what other writers need"
    )]
    NoSpace {
        image: String,
        layer: String,
        cause: String,
    },
    #[error("layer entry {entry:?} of image {image:?}: bad header field: {source}")]
    Header {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {entry:?} of image {image:?} to replace it: {source}")]
    Replace {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create file {entry:?} of image {image:?}: {source}")]
    CreateFile {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write file {entry:?} of image {image:?}: {source}")]
    WriteFile {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create directory {entry:?} of image {image:?}: {source}")]
    CreateDir {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create symlink {entry:?} of image {image:?}: {source}")]
    CreateSymlink {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create hardlink {entry:?} of image {image:?}: {source}")]
    CreateHardlink {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create device or fifo {entry:?} of image {image:?}: {source}")]
    CreateNode {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot create overlay whiteout {entry:?} of image {image:?}: {source}; the layer \
         cache needs a filesystem and privileges that allow 0:0 character devices"
    )]
    CreateWhiteout {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot mark directory {entry:?} of image {image:?} opaque (trusted.overlay.opaque): \
         {source}; the layer cache needs root and a filesystem with trusted xattrs"
    )]
    SetOpaque {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set owner of {entry:?} of image {image:?}: {source}")]
    SetOwner {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set mode of {entry:?} of image {image:?}: {source}")]
    SetMode {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set xattr {name:?} on {entry:?} of image {image:?}: {source}")]
    SetXattr {
        entry: String,
        name: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set times of {entry:?} of image {image:?}: {source}")]
    SetTimes {
        entry: String,
        image: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer of image {image:?} has more than {limit} bytes after its end-of-archive \
         marker; refusing it as hostile"
    )]
    TrailingData { image: String, limit: u64 },
}

impl UnpackError {
    /// A failure whose cause is ENOSPC or EDQUOT, said as what it is: the
    /// cache is full, not the layer broken.
    pub(super) fn or_no_space(self, layer: &str) -> UnpackError {
        let full = std::error::Error::source(&self)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
            .is_some_and(|e| e == libc::ENOSPC || e == libc::EDQUOT);
        if !full {
            return self;
        }
        let image = match &self {
            UnpackError::CreateFile { image, .. }
            | UnpackError::WriteFile { image, .. }
            | UnpackError::CreateDir { image, .. }
            | UnpackError::CreateSymlink { image, .. }
            | UnpackError::CreateHardlink { image, .. }
            | UnpackError::CreateNode { image, .. }
            | UnpackError::CreateWhiteout { image, .. }
            | UnpackError::SetOpaque { image, .. }
            | UnpackError::SetXattr { image, .. }
            | UnpackError::Resolve { image, .. }
            | UnpackError::Replace { image, .. } => image.clone(),
            _ => return self,
        };
        UnpackError::NoSpace {
            image,
            layer: layer.to_string(),
            cause: self.to_string(),
        }
    }
}
