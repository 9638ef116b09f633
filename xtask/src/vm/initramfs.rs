//! The guest's initramfs: a newc cpio archive (written here, no `cpio` tool) holding the static
//! busybox, the modules of that very kernel that a 9p root over virtio-pci and an overlayfs
//! need (with their dependencies, from the kernel's `modules.dep`), and the `/init` script of
//! [`super::guest::initramfs_init`].
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Installed;

/// The static busybox of Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// The modules the guest loads, in this order, with everything they depend on before them.
/// Ones built into a kernel are skipped; a missing optional one is skipped too.
const MODULES: &[(&str, bool)] = &[
    // name, required
    ("virtio_pci", true),
    ("9pnet_virtio", true),
    ("9p", true),
    ("overlay", true),
    // the guest's entropy (getrandom would wait for it on 5.10)
    ("virtio_rng", false),
];

/// Build the initramfs of `kernel` with `init` as its `/init`.
pub fn build(kernel: &Installed, init: &str) -> Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "dev", "proc", "sys", "lib", "lower", "rw", "newroot", "run",
    ] {
        cpio.dir(dir);
    }
    cpio.dir("lib/modules");
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian package busybox-static)"))?;
    if !is_static_elf(&busybox) {
        bail!(
            "{BUSYBOX} is dynamically linked: the initramfs needs Debian's busybox-static (run `cargo xtask setup --test`)"
        );
    }
    cpio.file("bin/busybox", 0o755, &busybox);
    for module in resolve(&kernel.modules, MODULES)? {
        let data = read_module(&kernel.modules.join(&module.path))?;
        cpio.file(&format!("lib/modules/{}.ko", module.name), 0o644, &data);
    }
    cpio.file("init", 0o755, init.as_bytes());
    Ok(cpio.finish())
}

/// The names of the modules `build` puts in, in load order (for the init script).
pub fn module_names(kernel: &Installed) -> Result<Vec<String>> {
    Ok(resolve(&kernel.modules, MODULES)?
        .into_iter()
        .map(|m| m.name)
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name, with `_` for `-` (virtio-rng.ko is `virtio_rng`).
    pub name: String,
    /// Path relative to the modules directory, as in modules.dep.
    pub path: String,
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules to load for `wanted`, dependencies first, each once. A wanted module built into
/// the kernel (modules.builtin) needs nothing.
pub fn resolve(modules_dir: &Path, wanted: &[(&str, bool)]) -> Result<Vec<Module>> {
    let dep_path = modules_dir.join("modules.dep");
    let deps_text =
        fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let builtin_text = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    resolve_from(&deps_text, &builtin_text, wanted)
}

fn resolve_from(
    deps_text: &str,
    builtin_text: &str,
    wanted: &[(&str, bool)],
) -> Result<Vec<Module>> {
    // name -> (path, the paths it depends on)
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in deps_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim().to_string();
        deps.insert(
            module_name(&path),
            (path, rest.split_whitespace().map(str::to_owned).collect()),
        );
    }
    let builtin: HashSet<String> = builtin_text.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for (name, required) in wanted {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        if !deps.contains_key(&name) {
            if *required {
                bail!("module {name} is neither in modules.dep nor built in");
            }
            continue;
        }
        visit(&name, &deps, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut HashSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        bail!("modules.dep: dependency loop at {name}");
    }
    if seen.contains(name) {
        return Ok(());
    }
    let (path, needs) = deps.get(name).with_context(|| {
        format!("modules.dep names {name} as a dependency but has no line for it")
    })?;
    for dep in needs {
        visit(&module_name(dep), deps, seen, order, depth + 1)?;
    }
    seen.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        path: path.clone(),
    });
    Ok(())
}

/// A module's ELF object, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz`) so that busybox insmod
/// takes it whatever it was built with.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<&[&str]> = if name.ends_with(".ko.xz") {
        Some(&["xz", "-dc"])
    } else if name.ends_with(".ko.zst") {
        Some(&["zstd", "-dcq"])
    } else if name.ends_with(".ko.gz") {
        Some(&["gzip", "-dc"])
    } else {
        None
    };
    let Some(tool) = tool else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {} to decompress {}", tool[0], path.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}\n{}",
            tool.join(" "),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Whether `data` is an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(data: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // 64-bit little-endian ELF only (x86_64)
    if data.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i * usize::from(phentsize)))
            .and_then(u32_at)
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// A newc ("070701") cpio archive, as the kernel unpacks it into its rootfs.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | perm, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

/// Write the initramfs of `kernel` into `dir`; its path.
pub fn write(kernel: &Installed, init: &str, dir: &Path) -> Result<PathBuf> {
    let path = dir.join("initramfs.cpio");
    fs::write(&path, build(kernel, init)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
";

    #[test]
    fn dependencies_come_first_and_once() {
        let order = resolve_from(DEP, "", MODULES).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "9p",
                "overlay",
                "virtio_rng"
            ]
        );
        assert_eq!(
            order[9].path,
            "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
        );
    }

    #[test]
    fn builtin_and_missing_optional_modules_are_skipped() {
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/overlayfs/overlay.ko\n";
        let dep = DEP.replace(
            "kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n",
            "",
        );
        let order = resolve_from(&dep, builtin, MODULES).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "9pnet",
                "virtio_ring",
                "virtio",
                "9pnet_virtio",
                "netfs",
                "9p"
            ]
        );
        assert!(resolve_from("", "", &[("9p", true)]).is_err());
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // header (110) + "init\0" padded to 116, data 10 padded to 12
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..126], b"#!/bin/sh\n");
        assert_eq!(&out[128..134], b"070701");
        let mode = std::str::from_utf8(&out[14..22]).unwrap();
        assert_eq!(u32::from_str_radix(mode, 16).unwrap(), 0o100_755);
        assert!(out.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        if let Ok(sh) = fs::read("/bin/sh") {
            assert!(!is_static_elf(&sh), "/bin/sh is dynamic on Debian");
        }
    }
}
