//! Compiles the control API (proto/cvmd/v1/control.proto here) with protoc, as
//! containerd-client does: building needs `protoc` (Debian's
//! protobuf-compiler). The file descriptor set it also writes is what the
//! reflection service (the daemon's src/api/server.rs) answers with.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cvmd/v1/control.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cvmd_descriptor.bin"))
        .compile_protos(&["proto/cvmd/v1/control.proto"], &["proto"])?;
    Ok(())
}
