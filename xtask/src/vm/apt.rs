//! apt with a configuration of our own: its own sources list, lists and cache (and, to only
//! download, its own state), passed with `-o` on every call, so that the host's apt sources and
//! lists are never read or changed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::output;

/// Where the Debian archive is read from.
fn mirror() -> String {
    std::env::var("APPTHEUS_VM_MIRROR").unwrap_or_else(|_| "http://deb.debian.org".to_string())
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub struct PrivateApt {
    pub dir: PathBuf,
    /// Download only: an empty dpkg status and apt state of our own. Otherwise the host's
    /// (to install into the host from suites its sources do not list).
    private_state: bool,
}

impl PrivateApt {
    /// The suites the kernels of the matrix come from; downloads only.
    pub fn kernels(dir: &Path) -> Result<PrivateApt> {
        Self::new(
            dir,
            &[
                ("debian", "bullseye"),
                ("debian-security", "bullseye-security"),
                ("debian", "bookworm"),
                ("debian-security", "bookworm-security"),
                ("debian", "bookworm-backports"),
            ],
            true,
        )
    }

    /// Debian 12 with its backports, to install into this (Debian 12) host.
    pub fn bookworm_host(dir: &Path) -> Result<PrivateApt> {
        Self::new(
            dir,
            &[
                ("debian", "bookworm"),
                ("debian", "bookworm-updates"),
                ("debian-security", "bookworm-security"),
                ("debian", "bookworm-backports"),
            ],
            false,
        )
    }

    fn new(dir: &Path, suites: &[(&str, &str)], private_state: bool) -> Result<PrivateApt> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let m = mirror();
        let mut sources = String::from("# written by cargo xtask setup (xtask/src/vm/apt.rs)\n");
        for (path, suite) in suites {
            sources.push_str(&format!(
                "deb [arch=amd64 signed-by={KEYRING}] {m}/{path} {suite} main\n"
            ));
        }
        fs::write(dir.join("sources.list"), sources)?;
        if private_state {
            let status = dir.join("status");
            if !status.exists() {
                fs::File::create(&status)?;
            }
        }
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
            private_state,
        })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::Etc::SourceParts={d}/sources.list.d"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Acquire::Languages=none".to_string(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "APT::Sandbox::User=root".to_string(),
        ];
        if self.private_state {
            o.extend([
                format!("Dir::Etc::Preferences={d}/preferences"),
                format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
                format!("Dir::State={d}"),
                format!("Dir::State::status={d}/status"),
                "APT::Architecture=amd64".to_string(),
            ]);
        }
        o.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    fn apt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options());
        c
    }

    pub fn update(&self) -> Result<()> {
        crate::status(self.apt("apt-get").args(["-q", "update"]))
            .with_context(|| format!("apt-get update (private lists in {})", self.dir.display()))
    }

    pub fn package_names(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(output(self.apt("apt-cache").args(["pkgnames", prefix]))?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// The candidate version of a package and the apt source it comes from; None when the name
    /// has no installable version.
    pub fn candidate(&self, package: &str) -> Result<Option<(String, String)>> {
        let text = output(self.apt("apt-cache").args(["policy", package]))?;
        let Some(version) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        // In the version table, the lines after " <version> <prio>" name its sources.
        let mut lines = text.lines().skip_while(|l| {
            let mut w = l.split_whitespace();
            let first = w.next();
            let first = if first == Some("***") {
                w.next()
            } else {
                first
            };
            first != Some(version.as_str())
        });
        lines.next();
        let origin = lines
            .next()
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Ok(Some((version, origin)))
    }

    /// `apt-get download package=version` into `dir`; the path of the .deb.
    pub fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        crate::status(
            self.apt("apt-get")
                .args(["-q", "download", &format!("{package}={version}")])
                .current_dir(dir),
        )
        .with_context(|| format!("apt-get download {package}={version}"))?;
        // apt names it <package>_<version with ':' as %3a>_<arch>.deb
        let file = format!("{package}_{}_amd64.deb", version.replace(':', "%3a"));
        let path = dir.join(file);
        if !path.is_file() {
            bail!(
                "apt-get download did not leave {} in {}",
                path.display(),
                dir.display()
            );
        }
        Ok(path)
    }

    /// Install `packages` into the host from `release` (e.g. bookworm-backports), never
    /// removing a package (apt fails instead).
    pub fn install_from(&self, release: &str, packages: &[&str]) -> Result<()> {
        if self.private_state {
            bail!("this private apt configuration only downloads");
        }
        crate::status(
            self.apt("apt-get")
                .args(crate::setup::APT_INSTALL)
                .args(["-t", release])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("apt-get install -t {release} {}", packages.join(" ")))
    }
}
