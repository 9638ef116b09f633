use which::which;

/// Building this crate needs the `bpf-linker` binary, which cargo cannot express as a dependency:
/// rebuild whenever the one on PATH changes (`cargo xtask setup` installs it).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => panic!("bpf-linker not found on PATH ({e}); run `cargo xtask setup`"),
    }
}
