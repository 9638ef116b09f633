//! `cargo xtask package`: the .deb and the .rpm of apptheus.
//!
//! One build of the `dist` profile (the release profile without debug info) feeds both:
//! cargo-deb and cargo-generate-rpm only pack what `[package.metadata.deb]` and
//! `[package.metadata.generate-rpm]` in apptheus/Cargo.toml list. The tools are pinned and
//! installed by `setup::package_deps`.
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The Cargo profile the packages are built from (see the workspace Cargo.toml).
pub const PROFILE: &str = "dist";

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Package revision: the deb's `<version>-<revision>`, the rpm's release. Raise it to
    /// rebuild the same version as an upgrade.
    #[arg(long, default_value = "1")]
    revision: String,
    /// Directory for both packages [default: target/debian and target/generate-rpm].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pack the binaries already in target/dist/ instead of building them first.
    #[arg(long)]
    no_build: bool,
}

/// The packages made.
pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

pub fn run(args: PackageArgs) -> Result<()> {
    let root = crate::workspace_root();
    let start = Instant::now();
    if args.no_build {
        for bin in [
            "apptheus",
            "apptheus-exec",
            "apptheus-top",
            "apptheus-report",
        ] {
            let p = profile_dir().join(bin);
            if !p.is_file() {
                bail!(
                    "{} is missing: run `cargo xtask package` without --no-build",
                    p.display()
                );
            }
        }
        check_no_test_hooks()?;
    } else {
        build()?;
    }
    let built = start.elapsed();
    let out = args
        .out
        .map(|o| if o.is_absolute() { o } else { root.join(o) });
    let pk = pack(&args.revision, out.as_deref())?;
    println!(
        "xtask package: {} and {} (build {:.1} s, packing {:.1} s)",
        pk.deb.display(),
        pk.rpm.display(),
        built.as_secs_f64(),
        (start.elapsed() - built).as_secs_f64()
    );
    Ok(())
}

/// target/dist: where the `dist` profile puts its binaries.
fn profile_dir() -> PathBuf {
    crate::workspace_root().join("target").join(PROFILE)
}

pub fn build() -> Result<()> {
    crate::status(
        crate::cargo()
            .args(crate::CLIENT_AND_DAEMON)
            .args(["--profile", PROFILE]),
    )?;
    check_no_test_hooks()
}

/// What every test hook's environment variable starts with (apptheus/src/testhook.rs).
const TEST_HOOK_PREFIX: &[u8] = b"APPTHEUS_TEST_";

/// The packaged daemon must hold no test hook: built without the `test-hooks` feature, it does
/// not even name their variables, so setting one cannot change what it does.
fn check_no_test_hooks() -> Result<()> {
    let bin = profile_dir().join("apptheus");
    let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if names_a_test_hook(&bytes) {
        bail!(
            "{} names a test hook ({}*): it was built with the `test-hooks` feature",
            bin.display(),
            String::from_utf8_lossy(TEST_HOOK_PREFIX)
        );
    }
    println!("xtask package: {} holds no test hook", bin.display());
    Ok(())
}

fn names_a_test_hook(binary: &[u8]) -> bool {
    binary
        .windows(TEST_HOOK_PREFIX.len())
        .any(|w| w == TEST_HOOK_PREFIX)
}

/// Run both packagers on the built binaries; `out` defaults to each tool's own directory.
fn pack(revision: &str, out: Option<&Path>) -> Result<Packages> {
    if revision.is_empty()
        || !revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        bail!(
            "--revision {revision:?}: use digits, letters and dots only (valid for dpkg and rpm)"
        );
    }
    let root = crate::workspace_root();
    let deb_dir = out.map_or_else(|| root.join("target/debian"), Path::to_path_buf);
    let rpm_dir = out.map_or_else(|| root.join("target/generate-rpm"), Path::to_path_buf);
    for d in [&deb_dir, &rpm_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // cargo-deb prints the package's path on stdout.
    let deb = crate::setup::output(
        crate::cargo()
            .args(["deb", "--package", "apptheus", "--no-build", "--no-strip"])
            .args(["--profile", PROFILE, "--deb-revision", revision])
            .arg("--output")
            .arg(&deb_dir),
    )?;
    let deb = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    crate::status(
        crate::cargo()
            .args(["generate-rpm", "--package", "apptheus"])
            .args(["--profile", PROFILE])
            .args(["--set-metadata", &format!("release = \"{revision}\"")])
            .arg("--output")
            .arg(&rpm_dir),
    )?;
    let rpm = newest(&rpm_dir, ".rpm")?;
    if !deb.is_file() {
        bail!("cargo deb did not report the package it made (got {deb:?})");
    }
    Ok(Packages { deb, rpm })
}

/// The most recently written file of `dir` whose name ends with `suffix`.
fn newest(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_name_anywhere_is_found() {
        assert!(names_a_test_hook(
            b"\0\x7fELF..APPTHEUS_TEST_MOVE_DELAY_MS\0"
        ));
        assert!(!names_a_test_hook(b"APPTHEUS_TES"));
        assert!(!names_a_test_hook(b"APPTHEUS_LOG"));
    }
}
