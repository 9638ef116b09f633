//! One guest run: QEMU with the kernel, its initramfs, the host's root shared read-only and a
//! results directory shared read-write; the serial console streamed to stdout and into a log;
//! a global timeout, after which QEMU is killed by its pid.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Kernel, guest, initramfs, kernels};

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct Options {
    /// `-accel kvm -cpu host` instead of TCG (only where KVM runs stock kernels).
    pub kvm: bool,
    /// QEMU's `-m`.
    pub memory: String,
    /// QEMU's `-smp`.
    pub smp: u32,
    /// The kernel's boot messages on the console too (default: warnings and worse).
    pub verbose: bool,
    /// Print the guest's console on stdout while it runs (it goes to the log in any case).
    pub echo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kvm: false,
            memory: "4G".to_string(),
            smp: 2,
            verbose: false,
            echo: true,
        }
    }
}

/// What came of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kernel: Kernel,
    /// `uname -r` of the guest's kernel.
    pub release: String,
    /// The command's exit status in the guest (128+N for signal N); None when the guest did not
    /// report one (timeout, a crash, a failed boot: see the log).
    pub status: Option<i32>,
    pub timed_out: bool,
    /// From QEMU's start to the guest init's first report.
    pub boot_to_init: Option<Duration>,
    /// The command alone, as the host saw its start and end on the console.
    pub command_time: Option<Duration>,
    /// QEMU's whole run.
    pub total: Duration,
    /// The console's log.
    pub log: PathBuf,
}

impl Outcome {
    /// The status, or an error with the end of the console's log.
    pub fn status(&self) -> Result<i32> {
        self.status.with_context(|| {
            let tail = fs::read_to_string(&self.log)
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                })
                .unwrap_or_default();
            format!(
                "the {} guest reported no status ({}); console log {}, its end:\n{tail}",
                self.kernel.series(),
                if self.timed_out {
                    "timed out"
                } else {
                    "QEMU exited"
                },
                self.log.display()
            )
        })
    }
}

/// Console markers seen, as times since QEMU's start.
#[derive(Default)]
struct Marks {
    init: Option<Duration>,
    run: Option<Duration>,
    end: Option<Duration>,
}

/// Boot `kernel`, run `cmd` as root in `cwd` with exactly `env`, wait at most `timeout`.
pub fn run(
    kernel: Kernel,
    cmd: &[String],
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
    opts: &Options,
) -> Result<Outcome> {
    if cmd.is_empty() {
        bail!("no command to run in the guest");
    }
    if let Some((k, _)) = env.iter().find(|(k, _)| !guest::valid_env_name(k)) {
        bail!("not an environment variable name: {k:?}");
    }
    let installed = kernels::require(kernel)?;
    let dir = RunDir::new(kernel)?;
    let results = dir.0.join("results");
    fs::create_dir(&results).with_context(|| format!("creating {}", results.display()))?;
    let hostname = format!("apptheus-vm-{}", kernel.series().replace('.', "-"));
    let init = guest::guest_init(&guest::Plan {
        hostname: &hostname,
        modules_dir: &installed.modules,
        release: &installed.release,
        cwd,
        env,
        cmd,
    });
    let init_path = results.join("init");
    fs::write(&init_path, init).with_context(|| format!("writing {}", init_path.display()))?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let modules = initramfs::module_names(&installed)?;
    let initrd = initramfs::write(&installed, &guest::initramfs_init(&modules), &dir.0)?;

    let log_dir = crate::workspace_root().join("target/vm");
    fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log = log_dir.join(format!("{}.log", kernel.series()));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    let mut qemu = qemu_command(&installed, &initrd, &results, opts)?;
    let start = Instant::now();
    let mut child = Guard(Some(
        qemu.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {qemu:?}"))?,
    ));
    let marks = Arc::new(Mutex::new(Marks::default()));
    let log_file = Arc::new(Mutex::new(log_file));
    let readers = child.take_pipes(start, &marks, &log_file, opts.echo);

    let deadline = start + timeout;
    let mut timed_out = false;
    let exit = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            timed_out = true;
            eprintln!(
                "xtask vm: the {} guest is still running after {} s: killing QEMU (pid {})",
                kernel.series(),
                timeout.as_secs(),
                child.pid()
            );
            child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let total = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    if let Some(st) = exit
        && !st.success()
    {
        eprintln!("xtask vm: QEMU exited with {st}");
    }
    let status = fs::read_to_string(results.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let m = marks
        .lock()
        .map_err(|_| anyhow::anyhow!("console reader panicked"))?;
    Ok(Outcome {
        kernel,
        release: installed.release.clone(),
        status,
        timed_out,
        boot_to_init: m.init,
        command_time: m.run.zip(m.end).map(|(a, b)| b.saturating_sub(a)),
        total,
        log,
    })
}

fn qemu_command(
    k: &kernels::Installed,
    initrd: &Path,
    results: &Path,
    opts: &Options,
) -> Result<Command> {
    let mut cmdline = vec![
        "console=ttyS0",
        "panic=-1",
        // pure cgroup v2, as RHEL 9, Ubuntu 22.04+ and Debian 12 boot
        "cgroup_no_v1=all",
        "systemd.unified_cgroup_hierarchy=1",
        "8250.nr_uarts=1",
        "edd=off",
        "random.trust_cpu=on",
        // speculation mitigations cost much under TCG and protect nothing here
        "mitigations=off",
    ];
    cmdline.push(if opts.verbose {
        "ignore_loglevel"
    } else {
        "loglevel=4"
    });
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-name", &format!("apptheus-vm-{}", k.kernel.series())]);
    c.args(["-nodefaults", "-nographic", "-no-reboot"]);
    if opts.kvm {
        if !Path::new("/dev/kvm").exists() {
            bail!("--kvm: /dev/kvm does not exist");
        }
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    c.args(["-smp", &opts.smp.to_string(), "-m", &opts.memory]);
    c.arg("-kernel").arg(&k.vmlinuz);
    c.arg("-initrd").arg(initrd);
    c.args(["-append", &cmdline.join(" ")]);
    c.args(["-serial", "stdio"]);
    c.args([
        "-fsdev",
        &format!(
            "local,id={t},path=/,security_model=none,readonly=on,multidevs=remap",
            t = guest::ROOT_TAG
        ),
        "-device",
        &format!("virtio-9p-pci,fsdev={t},mount_tag={t}", t = guest::ROOT_TAG),
    ]);
    let results = results
        .to_str()
        .context("the results directory's path is not UTF-8")?;
    if results.contains(',') {
        bail!("the results directory's path has a comma: {results}");
    }
    c.args([
        "-fsdev",
        &format!(
            "local,id={t},path={results},security_model=none,multidevs=remap",
            t = guest::RESULTS_TAG
        ),
        "-device",
        &format!(
            "virtio-9p-pci,fsdev={t},mount_tag={t}",
            t = guest::RESULTS_TAG
        ),
    ]);
    c.args(["-device", "virtio-rng-pci"]);
    Ok(c)
}

/// QEMU, killed by its pid (and reaped) if still running when dropped: on a timeout, an error
/// or a panic of ours.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.0.as_mut() {
            Some(c) => Ok(c.try_wait().context("waiting for QEMU")?),
            None => bail!("QEMU is gone"),
        }
    }

    fn kill(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // Child::kill is kill(pid, SIGKILL) on this very process.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Threads that copy QEMU's stdout (the serial console) and stderr into the log and, with
    /// `echo`, to our stdout/stderr, noting the guest's markers.
    fn take_pipes(
        &mut self,
        start: Instant,
        marks: &Arc<Mutex<Marks>>,
        log: &Arc<Mutex<fs::File>>,
        echo: bool,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads = Vec::new();
        let Some(child) = self.0.as_mut() else {
            return threads;
        };
        if let Some(out) = child.stdout.take() {
            let (marks, log) = (Arc::clone(marks), Arc::clone(log));
            threads.push(std::thread::spawn(move || {
                copy_lines(out, &log, echo, "", |line| {
                    note_mark(line, start, &marks);
                })
            }));
        }
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(log);
            threads.push(std::thread::spawn(move || {
                copy_lines(err, &log, echo, "qemu: ", |_| {})
            }));
        }
        threads
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn copy_lines(
    from: impl Read,
    log: &Mutex<fs::File>,
    echo: bool,
    prefix: &str,
    mut seen: impl FnMut(&str),
) {
    let mut r = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = strip_escapes(text.trim_end_matches(['\n', '\r']));
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{prefix}{line}");
        }
        if echo {
            if prefix.is_empty() {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{line}");
                let _ = o.flush();
            } else {
                eprintln!("{prefix}{line}");
            }
        }
        seen(&line);
    }
}

/// A console line without carriage returns and terminal escape sequences (the firmware clears
/// the screen and switches line wrapping).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // parameters and intermediates, then one final byte in @..~
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn note_mark(line: &str, start: Instant, marks: &Mutex<Marks>) {
    let Some(rest) = line
        .find(guest::MARK)
        .map(|i| &line[i + guest::MARK.len()..])
    else {
        return;
    };
    let Ok(mut m) = marks.lock() else {
        return;
    };
    let now = Some(start.elapsed());
    if rest.starts_with("init at ") && m.init.is_none() {
        m.init = now;
    } else if rest.starts_with("run: ") && m.run.is_none() {
        m.run = now;
    } else if rest.starts_with("status ") {
        m.end = now;
    }
}

/// A private directory of one run (initramfs, results share), removed when dropped.
struct RunDir(PathBuf);

impl RunDir {
    fn new(kernel: Kernel) -> Result<RunDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "apptheus-vm-{}-{}-{nanos}",
            kernel.series(),
            std::process::id()
        ));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2JSeaBIOS (version 1)\r"),
            "SeaBIOS (version 1)"
        );
        assert_eq!(strip_escapes("test a ... ok"), "test a ... ok");
    }
}
