//! Errors of the bundle stage: one variant per failure site, each naming
//! what was being decided, where, and what the user can do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "cannot open the rootfs {path:?}: {source}; assemble the rootfs before writing the bundle"
    )]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {file} of image {image}: {source}; the image's file may be damaged")]
    ImageFile {
        image: String,
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file} of image {image} is larger than {limit} bytes; refusing to parse it")]
    ImageFileTooLarge {
        image: String,
        file: String,
        limit: u64,
    },
    #[error(
        "invalid user {value:?} for image {image}: {reason}; use name, uid, name:group or uid:gid"
    )]
    BadUser {
        image: String,
        value: String,
        reason: String,
    },
    #[error("user {user:?} of image {image} is not in its /etc/passwd; add it to the image or use a numeric uid")]
    UnknownUser { image: String, user: String },
    #[error("group {group:?} of image {image} is not in its /etc/group; add it to the image or use a numeric gid")]
    UnknownGroup { image: String, group: String },
    #[error(
        "image {image} has nothing to run: no /sbin/init, no Entrypoint or Cmd, and no /bin/sh \
         and sleep for a keep-alive; set a command (CVMD_COMMAND) or use an image with a shell"
    )]
    NothingToRun { image: String },
    #[error("invalid stop signal {value:?} of image {image}; use a name like SIGTERM or SIGRTMIN+3, or a number 1-64")]
    BadStopSignal { image: String, value: String },
    #[error("invalid mount {spec:?}: {reason}; use SRC:DST[:ro] with absolute paths")]
    BadMount { spec: String, reason: String },
    #[error("invalid device {path:?}: {reason}")]
    BadDevice { path: PathBuf, reason: String },
    #[error("invalid ID mapping: {reason}")]
    BadIdMap { reason: String },
    #[error("invalid CPU limit {value:?}: {reason}; use a count like 2 or 1.5")]
    BadCpus { value: String, reason: String },
    #[error("invalid {what} setting {value:?}: {reason}")]
    BadSetting {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the OCI spec ({what}): {source}")]
    Spec {
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("cannot read {path:?}: {source}")]
    HostFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path:?}: {reason}")]
    HostParse { path: PathBuf, reason: String },
    #[error(
        "cannot write the bundle file {path:?}: {source}; check that the state dir is writable"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Maps an oci-spec builder error to the failure site that built it.
pub(crate) fn spec_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> BundleError {
    move |source| BundleError::Spec { what, source }
}
