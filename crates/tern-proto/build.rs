//! Compiles every `.proto` file of `proto/tern/v1/` (at the workspace root) into Rust, with a file descriptor
//! set for gRPC server reflection, and KEDA's external scaler contract (`proto/keda/externalscaler.proto`)
//! with its own descriptor set. Needs `protoc` (Debian package `protobuf-compiler`), or `PROTOC` set to it.

use std::path::{Path, PathBuf};

/// The API version directories compiled; adding `v2` later is one entry here and one module in `lib.rs`.
const PACKAGES: &[&str] = &["tern/v1"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let mut files = Vec::new();
    for package in PACKAGES {
        let dir = root.join(package);
        println!("cargo:rerun-if-changed={}", dir.display());
        files.extend(protos_in(&dir)?);
    }
    if files.is_empty() {
        return Err(format!("no .proto files under {}", root.display()).into());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tern_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;

    let keda = root.join("keda/externalscaler.proto");
    println!("cargo:rerun-if-changed={}", keda.display());
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("keda_descriptor.bin"))
        .compile_protos(&[keda], &[root])?;
    Ok(())
}

/// The `.proto` files of `dir`, sorted so that the generated code does not depend on directory order.
fn protos_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
