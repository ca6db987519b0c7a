//! Compiles the control API (proto/cvmd/v1/control.proto) with protoc, as
//! containerd-client does: building needs `protoc` (Debian's
//! protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cvmd/v1/control.proto");
    tonic_prost_build::configure().compile_protos(&["proto/cvmd/v1/control.proto"], &["proto"])?;
    Ok(())
}
