//! Compiles `tagpoll/v1/*.proto` with protox (pure Rust), so building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tagpoll");
    let descriptors = protox::compile(["tagpoll/v1/tagpoll.proto"], ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
