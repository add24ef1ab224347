//! Compiles every `.proto` file of `proto/tern/v1/` (at the workspace root) into Rust, with a file descriptor
//! set for gRPC server reflection, and KEDA's external scaler contract (`proto/keda/externalscaler.proto`)
//! with its own descriptor set.
//!
//! The `.proto` files are parsed by `protox`, a protobuf compiler written in Rust, and its descriptors are
//! handed to `tonic-prost-build` for code generation: building needs nothing but Rust, never `protoc`
//! (issue #16). `PROTOC` and `PATH` are not read.

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
    compile(&files, &root, &out.join("tern_descriptor.bin"))?;

    let keda = root.join("keda/externalscaler.proto");
    compile(&[keda], &root, &out.join("keda_descriptor.bin"))?;
    Ok(())
}

/// Compiles `files` (found under `include`) into Rust in `OUT_DIR`, and writes their encoded
/// `FileDescriptorSet` to `descriptor` for `tonic::include_file_descriptor_set!`.
///
/// The set holds the imported files and the source info, as `protoc --include_imports --include_source_info`
/// (what `prost-build` ran) did: reflection clients resolve every type the services use from it alone.
fn compile(files: &[PathBuf], include: &Path, descriptor: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut compiler = protox::Compiler::new([include])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    // Every file read, imports included, so that editing an imported file reruns this script too.
    for file in compiler.files() {
        if let Some(path) = file.path() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // `encode_file_descriptor_set` keeps custom options that the `prost_types` form would drop.
    std::fs::write(descriptor, compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
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
