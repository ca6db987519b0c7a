//! Checks of the repository's own files: the README, cluster guides, the
//! Coder template, the shipped files and the Kubernetes manifests.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod cluster_guides;
mod coder_template;
mod manifests;
mod readme;
mod ship_files;
