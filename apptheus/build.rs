//! Builds the eBPF programs (apptheus-ebpf) for the bpf target and puts the object in OUT_DIR,
//! where `tracker` embeds it. Needs nightly's rust-src and bpf-linker: `cargo xtask setup`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // The revision for apptheus_build_info; "unknown" outside a git checkout.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=APPTHEUS_REVISION={revision}");
    // Rerun when HEAD moves. git says where HEAD and the branches are: in a worktree `.git` is a
    // file, and a path that does not exist would rerun this script (and rebuild) every time.
    for name in ["HEAD", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "apptheus-ebpf")
        .ok_or_else(|| anyhow!("apptheus-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
