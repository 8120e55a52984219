//! Generates the envd messages from `proto/` (E2B's published `.proto` files) with `protox`
//! (no `protoc` needed), `prost` (the structs) and `pbjson` (their proto3 JSON mapping).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/process/process.proto", "proto/filesystem/filesystem.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let set = prost::Message::encode_to_vec(&descriptors);
    let mut config = prost_build::Config::new();
    config.compile_well_known_types().extern_path(".google.protobuf", "::pbjson_types").skip_protoc_run();
    config.compile_fds(descriptors)?;
    pbjson_build::Builder::new().register_descriptors(&set)?.build(&[".process", ".filesystem"])?;
    Ok(())
}
