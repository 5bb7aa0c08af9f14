//! Compiles every `.proto` under `<repo>/proto/crm` with protox (pure Rust, no `protoc`),
//! generates prost messages plus tonic clients and servers, and writes the encoded file
//! descriptor set that the reflection service serves.

use std::path::{Path, PathBuf};

use prost::Message as _;

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&proto_root.join("crm"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_root, &proto_root.join("vendor")])?;
    std::fs::write(
        out_dir.join("crm_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // Methods a service has not built yet answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // Ordered maps encode deterministically, so equal requests hash equally.
        .btree_map(".")
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
