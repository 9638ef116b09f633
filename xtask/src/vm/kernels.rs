//! The kernels of the matrix: Debian's generic `-amd64` images, fetched with `apt-get download`
//! through a private apt configuration and extracted into a machine-wide cache.
//!
//! Layout of the cache (`/var/cache/apptheus/vm`, or `$APPTHEUS_VM_CACHE`):
//! ```text
//! apt/                    private apt: sources.list, lists, cache, state, an empty status file
//! 5.10/manifest.json      what was fetched (package, version, uname release, apt origin)
//! 5.10/root/boot/vmlinuz-<release>
//! 5.10/root/lib/modules/<release>/   the package's modules, plus modules.dep from `depmod -b`
//! 6.1/ 6.12/              likewise
//! manifest.json           the three manifests together
//! ```
//! A series is fetched when its `manifest.json` is missing (it is written last, so a fetch that
//! was cut short is redone); `refresh` fetches the newest again.
use nix::fcntl::{Flock, FlockArg};
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{Kernel, apt::PrivateApt};

/// The cache directory, outside the repository (CI starts from a fresh clone) and outside /tmp
/// (a guest mounts a tmpfs there).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("APPTHEUS_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/apptheus/vm"))
}

/// One fetched kernel, as recorded in its manifest.
#[derive(Debug, Clone)]
pub struct Installed {
    pub kernel: Kernel,
    pub package: String,
    pub version: String,
    /// `uname -r` of that kernel: the name of its modules directory.
    pub release: String,
    /// The apt source it came from (a line of `apt-cache policy`).
    pub origin: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

impl Installed {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "series": self.kernel.series(),
            "package": self.package,
            "version": self.version,
            "release": self.release,
            "origin": self.origin,
            "vmlinuz": self.vmlinuz,
            "modules": self.modules,
        })
    }

    fn from_json(kernel: Kernel, v: &serde_json::Value) -> Option<Installed> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        Some(Installed {
            kernel,
            package: s("package")?,
            version: s("version")?,
            release: s("release")?,
            origin: s("origin").unwrap_or_default(),
            vmlinuz: s("vmlinuz")?.into(),
            modules: s("modules")?.into(),
        })
    }
}

fn series_dir(kernel: Kernel) -> PathBuf {
    cache_dir().join(kernel.series())
}

/// The fetched kernel of a series, if its manifest and image are there (a few stats).
pub fn installed(kernel: Kernel) -> Option<Installed> {
    let text = fs::read_to_string(series_dir(kernel).join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let k = Installed::from_json(kernel, &v)?;
    (k.vmlinuz.is_file() && k.modules.join("modules.dep").is_file()).then_some(k)
}

/// The fetched kernel of a series, or an error saying how to fetch it.
pub fn require(kernel: Kernel) -> Result<Installed> {
    installed(kernel).with_context(|| {
        format!(
            "kernel {} is not in {}: run `cargo xtask setup --test`",
            kernel.series(),
            cache_dir().display()
        )
    })
}

/// Make sure every series of the matrix is in the cache; with `refresh`, fetch the newest
/// version of each again. Fast (three manifests read) when all are there.
pub fn ensure(refresh: bool) -> Result<()> {
    if !refresh && Kernel::ALL.iter().all(|k| installed(*k).is_some()) {
        return Ok(());
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // One fetch at a time on this machine (other worktrees may run setup too).
    let _lock = Lock::take(&cache.join(".lock"))?;
    let wanted: Vec<Kernel> = Kernel::ALL
        .iter()
        .copied()
        .filter(|k| refresh || installed(*k).is_none())
        .collect();
    if wanted.is_empty() {
        return Ok(()); // fetched by someone else while we waited for the lock
    }
    let apt = PrivateApt::kernels(&cache.join("apt"))?;
    println!(
        "xtask setup: reading Debian's kernel lists (bullseye, bookworm, bookworm-backports) through a private apt configuration in {}",
        apt.dir.display()
    );
    apt.update()?;
    let names = apt.package_names("linux-image-")?;
    for kernel in wanted {
        fetch(&apt, kernel, &names)?;
    }
    write_combined_manifest()
}

/// Download, extract and index the newest kernel of one series.
fn fetch(apt: &PrivateApt, kernel: Kernel, names: &[String]) -> Result<()> {
    let mut candidates: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| kernel.package_rank(n).map(|r| (r, n)))
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let (package, version, origin) = candidates
        .iter()
        .find_map(|(_, n)| {
            apt.candidate(n)
                .ok()
                .flatten()
                .map(|(v, o)| ((*n).clone(), v, o))
        })
        .with_context(|| {
            format!(
                "no linux-image package of the {} series in the private apt lists",
                kernel.series()
            )
        })?;
    let dir = series_dir(kernel);
    if let Some(have) = installed(kernel)
        && have.package == package
        && have.version == version
    {
        println!(
            "xtask setup: kernel {} is up to date ({package} {version})",
            kernel.series()
        );
        return Ok(());
    }
    println!(
        "xtask setup: fetching kernel {}: {package} {version} ({origin})",
        kernel.series()
    );
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let deb = apt.download(&package, &version, &debs)?;
    // Extract next to the final place, then swap, so that a cut-short run leaves no half tree.
    let fresh = cache_dir().join(format!(".{}.new", kernel.series()));
    if fresh.exists() {
        fs::remove_dir_all(&fresh).with_context(|| format!("removing {}", fresh.display()))?;
    }
    let root = fresh.join("root");
    fs::create_dir_all(&root)?;
    crate::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("extracting {}", deb.display()))?;
    let release = only_entry(&root.join("lib/modules"))?;
    // The package ships no modules.dep (its postinst runs depmod): make it here.
    crate::status(Command::new(depmod()?).arg("-b").arg(&root).arg(&release))
        .with_context(|| format!("depmod for {release}"))?;
    let final_root = dir.join("root");
    let entry = Installed {
        kernel,
        package,
        version,
        release: release.clone(),
        origin,
        vmlinuz: final_root.join(format!("boot/vmlinuz-{release}")),
        modules: final_root.join(format!("lib/modules/{release}")),
    };
    if !root.join(format!("boot/vmlinuz-{release}")).is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    let manifest = serde_json::to_string_pretty(&entry.to_json())?;
    fs::write(fresh.join("manifest.json"), manifest + "\n")?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&fresh, &dir)
        .with_context(|| format!("renaming {} to {}", fresh.display(), dir.display()))?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    println!(
        "xtask setup: kernel {} is {release}, in {}",
        kernel.series(),
        dir.display()
    );
    Ok(())
}

fn depmod() -> Result<PathBuf> {
    ["/sbin/depmod", "/usr/sbin/depmod"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("depmod is missing (Debian package kmod): run `cargo xtask setup --test`")
}

/// The name of the one directory in `dir`.
fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one entry in {}, found {names:?}", dir.display()),
    }
}

/// `<cache>/manifest.json`: the fetched version of every series, in one place.
fn write_combined_manifest() -> Result<()> {
    let all: Vec<serde_json::Value> = Kernel::ALL
        .iter()
        .filter_map(|k| installed(*k))
        .map(|k| k.to_json())
        .collect();
    let path = cache_dir().join("manifest.json");
    fs::write(&path, serde_json::to_string_pretty(&all)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
pub struct Lock {
    // Held for its drop: closing the file releases the lock.
    _file: Flock<fs::File>,
}

impl Lock {
    pub fn take(path: &Path) -> Result<Lock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((f, _)) => {
                println!(
                    "xtask setup: waiting for another fetch of the VM kernels ({} is locked)",
                    path.display()
                );
                Flock::lock(f, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("flock {}", path.display()))?
            }
        };
        let _ = writeln!(f, "{}", std::process::id());
        Ok(Lock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_pick_the_generic_image_of_the_series() {
        assert_eq!(
            Kernel::V5_10.package_rank("linux-image-5.10.0-46-amd64"),
            Some(46)
        );
        assert_eq!(
            Kernel::V5_10.package_rank("linux-image-5.10.0-46-cloud-amd64"),
            None
        );
        assert_eq!(
            Kernel::V5_10.package_rank("linux-image-5.10.0-46-amd64-unsigned"),
            None
        );
        assert_eq!(
            Kernel::V6_1.package_rank("linux-image-6.1.0-57-amd64"),
            Some(57)
        );
        assert_eq!(
            Kernel::V6_1.package_rank("linux-image-6.12.117+deb12-amd64"),
            None
        );
        assert_eq!(
            Kernel::V6_12.package_rank("linux-image-6.12.117+deb12-amd64"),
            Some(117)
        );
        assert_eq!(
            Kernel::V6_12.package_rank("linux-image-6.12.117+deb12-rt-amd64"),
            None
        );
        assert_eq!(
            Kernel::V6_12.package_rank("linux-image-6.12.12+bpo-amd64"),
            None
        );
    }
}
