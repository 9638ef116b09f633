//! Privacy for metrics that leave the node: `--privacy.hash-salt-file`.
//!
//! Off by default. When on, every value that names a person (the `user` and `uid` labels, an
//! `exe_path` inside a user's home directory, and the uid in a `cgroup` label such as systemd's
//! `user-1000.slice` or Slurm's `uid_1000`) is replaced by a keyed hash of it: HMAC-SHA256 keyed
//! with a site salt, truncated to 16 hex digits and prefixed (`u-3fa9c0d2e4b61a07` for users and
//! uids, `p-...` for paths). Every node that shares the salt publishes the same value for the same
//! user, so per-user sums still work across a fleet; without the salt nobody can test a guessed
//! name against it (a plain hash of a user name is reversed by hashing the site's passwd file).
//!
//! The published form is made once, where a container's identity is built, so that its series,
//! its state-file entry and its log lines all carry the same value. Log lines written before an
//! identity exists (a refused launcher) go through [`Privacy::uid`] and [`Privacy::path`].
use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use ring::hmac;

use crate::safefile;

/// Hex digits kept of the HMAC: 64 bits, collision-free for any site's users and paths.
const HASH_HEX_DIGITS: usize = 16;
/// Fewer bytes of salt than this can be guessed; `head -c 32 /dev/urandom | base64` gives 44.
pub const MIN_SALT_BYTES: usize = 16;
/// A salt file larger than this is not a salt.
const MAX_SALT_FILE_BYTES: u64 = 64 << 10;
/// Prefix of a hashed user name or uid.
const USER_PREFIX: &str = "u-";
/// Prefix of a hashed executable path.
const PATH_PREFIX: &str = "p-";
/// The flag, as error messages name it.
const FLAG: &str = "--privacy.hash-salt-file";
/// Accounts below this uid are the system's (login.defs' UID_MIN), not people: their "homes"
/// (`/bin`, `/usr/sbin`, `/var/lib/...`) are not a person's directory.
const FIRST_PERSON_UID: u32 = 1000;
/// `nobody` (its home is `/nonexistent`).
const NOBODY_UID: u32 = 65534;

/// Why the salt file cannot be used. Each message names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum SaltError {
    #[error("{FLAG}: cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{FLAG}: {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{FLAG}: {} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{FLAG}: {} belongs to uid {uid}, not root", path.display())]
    NotRootOwned { path: PathBuf, uid: u32 },
    #[error(
        "{FLAG}: {} has mode {mode:04o}: users other than root can read or write it (chmod 0600)",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{FLAG}: {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{FLAG}: {} holds {len} bytes of salt, at least {MIN_SALT_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
        path.display()
    )]
    TooShort { path: PathBuf, len: usize },
}

/// `safefile`'s refusals in the salt file's words (each naming the flag).
impl From<safefile::Error> for SaltError {
    fn from(e: safefile::Error) -> SaltError {
        match e {
            safefile::Error::Io { path, error } => SaltError::Read {
                path,
                source: error,
            },
            safefile::Error::NotAFile { path } => SaltError::NotAFile { path },
            safefile::Error::TooLarge { path, max } => SaltError::TooLarge { path, max },
        }
    }
}

/// The values from a launcher's environment that `Privacy::chosen` hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    Account,
    Image,
}

impl Chosen {
    fn prefix(self) -> &'static str {
        match self {
            Chosen::Account => "a-",
            Chosen::Image => PATH_PREFIX,
        }
    }
}

/// A container's person-naming fields as they are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub user: String,
    pub uid: String,
    pub exe_path: String,
    /// The `cgroup` label (the path itself stays in the state file: a restart needs it).
    pub cgroup_label: String,
}

/// Whether, and with which key, values naming a person are hashed.
pub struct Privacy {
    /// `None`: off, every value is published as it is.
    key: Option<hmac::Key>,
    /// Home directories of the people in the passwd file, read once at start (a launcher's own
    /// home is looked up at admission too, for users only the name service knows).
    homes: Vec<PathBuf>,
}

impl fmt::Debug for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Privacy")
            .field("on", &self.is_on())
            .field("homes", &self.homes.len())
            .finish()
    }
}

impl Default for Privacy {
    fn default() -> Privacy {
        Privacy::off()
    }
}

impl Privacy {
    /// Publish everything as it is (the default).
    pub fn off() -> Privacy {
        Privacy {
            key: None,
            homes: Vec::new(),
        }
    }

    /// `--privacy.hash-salt-file`: hash with the salt in `path`, a regular file owned by root
    /// that no one else may read or write, holding at least `MIN_SALT_BYTES` bytes (trailing
    /// white space, such as the newline `echo` adds, is not part of the salt, so that files
    /// written either way on different nodes agree).
    pub fn from_salt_file(path: &Path) -> Result<Privacy, SaltError> {
        let salt = read_salt(path)?;
        Ok(Privacy::with_salt(&salt, passwd_homes("/etc/passwd")))
    }

    /// Hash with `salt`; `homes` are the directories whose paths name a person.
    pub fn with_salt(salt: &[u8], homes: Vec<PathBuf>) -> Privacy {
        Privacy {
            key: Some(hmac::Key::new(hmac::HMAC_SHA256, salt)),
            homes,
        }
    }

    pub fn is_on(&self) -> bool {
        self.key.is_some()
    }

    /// The published form of a launcher's user name, uid and executable path, and of its
    /// container's cgroup path.
    pub fn publish(&self, user: &str, uid: u32, exe_path: &str, cgroup: &str) -> Published {
        Published {
            user: self.user(user),
            uid: self.uid(uid),
            exe_path: self.path(exe_path, Some(uid)),
            cgroup_label: self.cgroup(cgroup),
        }
    }

    /// A user name as published.
    pub fn user(&self, user: &str) -> String {
        self.hashed(USER_PREFIX, user)
            .unwrap_or_else(|| user.to_string())
    }

    /// A uid as published. A user without a name is published by its uid in both labels, so
    /// both hash the same text.
    pub fn uid(&self, uid: u32) -> String {
        self.user(&uid.to_string())
    }

    /// An executable path as published: hashed whole when it lies in a person's home directory
    /// (any directory under /home, a home of the passwd file, or the home of `uid`). Its
    /// basename stays visible in the `exe` label and the container id.
    pub fn path(&self, path: &str, uid: Option<u32>) -> String {
        if !self.is_on() || !self.in_a_home(Path::new(path), uid) {
            return path.to_string();
        }
        self.hashed(PATH_PREFIX, path)
            .unwrap_or_else(|| path.to_string())
    }

    /// A value a user chose in their environment that may name them or their project (a Slurm
    /// account, an Apptainer image's path): hashed whole when on, wherever it lies. (Job ids and
    /// partitions stay in clear: a job id is what joins the scheduler's own accounting, and a
    /// partition is the site's name.)
    pub fn chosen(&self, kind: Chosen, value: &str) -> String {
        if value.is_empty() || is_published(kind.prefix(), value) {
            return value.to_string();
        }
        self.hashed(kind.prefix(), value)
            .unwrap_or_else(|| value.to_string())
    }

    /// A cgroup path as published: the uid of a systemd user slice or manager
    /// (`user-1000.slice`, `user@1000.service`) or of a Slurm uid directory (`uid_1000`) replaced
    /// by its hash, so that the path keeps its shape.
    pub fn cgroup(&self, path: &str) -> String {
        if !self.is_on() {
            return path.to_string();
        }
        path.split('/')
            .map(|segment| {
                for (prefix, suffix) in [("user-", ".slice"), ("user@", ".service"), ("uid_", "")] {
                    let uid = segment
                        .strip_prefix(prefix)
                        .and_then(|rest| rest.strip_suffix(suffix))
                        .and_then(|digits| digits.parse::<u32>().ok());
                    if let Some(uid) = uid {
                        return format!("{prefix}{}{suffix}", self.uid(uid));
                    }
                }
                segment.to_string()
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Publish fields that a previous run may have stored in clear (a state file written with
    /// the flag off); a value already in the published form stays as it is. The state file
    /// keeps the cgroup path itself, so its label is made again.
    pub fn republish(&self, user: &str, uid: &str, exe_path: &str, cgroup: &str) -> Published {
        let again = |prefix: &str, v: &str, hash: &dyn Fn(&str) -> String| {
            if !self.is_on() || is_published(prefix, v) {
                v.to_string()
            } else {
                hash(v)
            }
        };
        Published {
            user: again(USER_PREFIX, user, &|v| self.user(v)),
            uid: again(USER_PREFIX, uid, &|v| self.user(v)),
            exe_path: again(PATH_PREFIX, exe_path, &|v| self.path(v, uid.parse().ok())),
            cgroup_label: self.cgroup(cgroup),
        }
    }

    /// `prefix` + the first hex digits of HMAC-SHA256(salt, value); `None` when off.
    fn hashed(&self, prefix: &str, value: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let tag = hmac::sign(key, value.as_bytes());
        let mut out = String::with_capacity(prefix.len() + HASH_HEX_DIGITS);
        out.push_str(prefix);
        for b in tag.as_ref().iter().take(HASH_HEX_DIGITS / 2) {
            out.push_str(&format!("{b:02x}"));
        }
        Some(out)
    }

    fn in_a_home(&self, path: &Path, uid: Option<u32>) -> bool {
        if path.starts_with("/home") && path != Path::new("/home") {
            return true;
        }
        let own = uid.filter(|u| is_person(*u)).and_then(home_of);
        self.homes
            .iter()
            .chain(own.as_ref())
            .any(|home| path.starts_with(home))
    }
}

/// Whether `value` already has the published shape: `prefix` and 16 lowercase hex digits.
fn is_published(prefix: &str, value: &str) -> bool {
    value.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == HASH_HEX_DIGITS && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn is_person(uid: u32) -> bool {
    uid >= FIRST_PERSON_UID && uid != NOBODY_UID && uid != u32::MAX
}

/// A home that names its person: not `/` and not a system directory shared by many.
fn personal(home: &Path) -> bool {
    home.is_absolute() && home.components().count() > 1 && home != Path::new("/nonexistent")
}

/// The home directory of `uid` from the name service (LDAP and SSSD users included).
fn home_of(uid: u32) -> Option<PathBuf> {
    let user = nix::unistd::User::from_uid(uid.into()).ok()??;
    personal(&user.dir).then_some(user.dir)
}

/// The homes of the people (uid >= 1000, not nobody) in a passwd file; none if unreadable.
fn passwd_homes(file: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    parse_passwd_homes(&text)
}

fn parse_passwd_homes(text: &str) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let uid: u32 = fields.get(2)?.parse().ok()?;
            let home = PathBuf::from(fields.get(5)?);
            (is_person(uid) && personal(&home)).then_some(home)
        })
        .collect();
    homes.sort();
    homes.dedup();
    homes
}

/// Read the salt, checking the file through the descriptor that is read (no race with a
/// rename in between; a link the administrator made is followed: its target's owner and mode
/// are what is checked).
fn read_salt(path: &Path) -> Result<Vec<u8>, SaltError> {
    let file = safefile::open_with(path, safefile::Links::Follow)?;
    let meta = file.metadata();
    if meta.uid() != 0 {
        return Err(SaltError::NotRootOwned {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    // Group and others: no read, no write. (Execute bits reveal nothing.)
    let mode = meta.mode() & 0o7777;
    if mode & 0o066 != 0 {
        return Err(SaltError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut salt = file.read(MAX_SALT_FILE_BYTES)?;
    let len = salt.trim_ascii_end().len();
    salt.truncate(len);
    if salt.is_empty() {
        return Err(SaltError::Empty {
            path: path.to_path_buf(),
        });
    }
    if salt.len() < MIN_SALT_BYTES {
        return Err(SaltError::TooShort {
            path: path.to_path_buf(),
            len: salt.len(),
        });
    }
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const SALT: &[u8] = b"0123456789abcdef-site-salt";

    fn on() -> Privacy {
        Privacy::with_salt(SALT, vec![PathBuf::from("/srv/people/alice")])
    }

    #[test]
    fn off_publishes_everything_as_it_is() {
        let p = Privacy::off();
        assert!(!p.is_on());
        assert_eq!(
            p.publish(
                "alice",
                1000,
                "/home/alice/bin/x",
                "/user.slice/user-1000.slice/a_1"
            ),
            Published {
                user: "alice".into(),
                uid: "1000".into(),
                exe_path: "/home/alice/bin/x".into(),
                cgroup_label: "/user.slice/user-1000.slice/a_1".into(),
            }
        );
    }

    #[test]
    fn hashes_are_keyed_truncated_prefixed_and_stable() {
        let p = on();
        let user = p.user("alice");
        assert!(is_published("u-", &user), "{user}");
        // HMAC-SHA256("0123456789abcdef-site-salt", "alice"), first 8 bytes (computed with
        // `printf alice | openssl dgst -sha256 -hmac 0123456789abcdef-site-salt`).
        assert_eq!(user, "u-c8ef2e4faf46278c");
        // The same salt, another "node": the same value; another salt: another value.
        assert_eq!(Privacy::with_salt(SALT, Vec::new()).user("alice"), user);
        assert_ne!(
            Privacy::with_salt(b"another-salt-of-16+", Vec::new()).user("alice"),
            user
        );
        assert_ne!(p.user("bob"), user);
        // A nameless user is its uid in both labels.
        assert_eq!(p.uid(1234), p.user("1234"));
    }

    #[test]
    fn only_paths_in_homes_are_hashed() {
        let p = on();
        for clear in [
            "/usr/libexec/apptainer/bin/starter-suid",
            "/usr/bin/apptheus-exec",
            "/home",
            "/homework/x",
            "/srv/people/alicex/run",
        ] {
            assert_eq!(p.path(clear, Some(0)), clear);
        }
        for person in [
            "/home/alice/bin/sim",
            "/home/x",
            "/srv/people/alice/run",
            "/srv/people/alice",
        ] {
            let published = p.path(person, Some(0));
            assert!(is_published("p-", &published), "{person}: {published}");
        }
        let out = p.publish(
            "alice",
            1000,
            "/home/alice/bin/sim",
            "/slurm/uid_1000/job_7/a_1",
        );
        assert!(!format!("{out:?}").contains("alice"));
        assert!(!format!("{out:?}").contains("1000"));
    }

    #[test]
    fn uids_in_cgroup_paths_are_hashed() {
        let p = on();
        let u = p.uid(1000);
        assert_eq!(
            p.cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/apptheus/a_1"),
            format!("/user.slice/user-{u}.slice/user@{u}.service/app.slice/apptheus/a_1")
        );
        assert_eq!(
            p.cgroup("/slurm_n1/uid_1000/job_42/step_0/task_0/apptheus/apptheus-exec_9"),
            format!("/slurm_n1/uid_{u}/job_42/step_0/task_0/apptheus/apptheus-exec_9")
        );
        // Only whole uid segments: job ids, pids and other names stay.
        for clear in [
            "/system.slice/slurmstepd.scope/job_1000/step_0/user/task_0/apptheus/a_1000",
            "/user.slice/user-x.slice/a_1",
            "/uid_/a_1",
            "/",
        ] {
            assert_eq!(p.cgroup(clear), clear);
        }
    }

    #[test]
    fn republish_hashes_clear_values_once() {
        let p = on();
        let cg = "/slurm/uid_1000/job_7/apptheus/a_1";
        let first = p.publish("alice", 1000, "/home/alice/bin/sim", cg);
        assert_eq!(
            p.republish(&first.user, &first.uid, &first.exe_path, cg),
            first
        );
        assert_eq!(
            p.republish("alice", "1000", "/home/alice/bin/sim", cg),
            first
        );
        let off = Privacy::off();
        assert_eq!(off.republish("alice", "1000", "/x", cg).user, "alice");
        assert_eq!(off.republish("alice", "1000", "/x", cg).cgroup_label, cg);
    }

    #[test]
    fn passwd_homes_are_the_peoples() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    bin:x:2:2:bin:/bin:/usr/sbin/nologin\n\
                    alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
                    bob:x:1001:1001::/data/bob:/bin/bash\n\
                    svc:x:1002:1002::/:/usr/sbin/nologin\n\
                    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                    broken line\n";
        assert_eq!(
            parse_passwd_homes(text),
            [PathBuf::from("/data/bob"), PathBuf::from("/home/alice")]
        );
    }

    #[test]
    fn salt_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &[u8], mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let root = nix::unistd::geteuid().is_root();
        let good = write("good", b"0123456789abcdef-site-salt\n", 0o600);
        if root {
            assert_eq!(read_salt(&good).unwrap(), b"0123456789abcdef-site-salt");
            // The trailing newline is not part of the salt: both files give the same hashes.
            let bare = write("bare", b"0123456789abcdef-site-salt", 0o400);
            assert_eq!(
                Privacy::from_salt_file(&good).unwrap().user("alice"),
                Privacy::from_salt_file(&bare).unwrap().user("alice")
            );
            let empty = write("empty", b"\n", 0o600);
            assert!(matches!(read_salt(&empty), Err(SaltError::Empty { .. })));
            let short = write("short", b"abc", 0o600);
            assert!(matches!(
                read_salt(&short),
                Err(SaltError::TooShort { len: 3, .. })
            ));
            for mode in [0o640, 0o604, 0o620, 0o602, 0o644] {
                let p = write(&format!("m{mode:o}"), b"0123456789abcdef-site-salt", mode);
                let err = read_salt(&p).unwrap_err();
                assert!(matches!(err, SaltError::Exposed { .. }), "{mode:o}: {err}");
                assert!(err.to_string().contains(FLAG), "{err}");
            }
            let not_root = write("user", b"0123456789abcdef-site-salt", 0o600);
            nix::unistd::chown(&not_root, Some(nix::unistd::Uid::from_raw(1)), None).unwrap();
            assert!(matches!(
                read_salt(&not_root),
                Err(SaltError::NotRootOwned { uid: 1, .. })
            ));
            // A link the administrator made is followed (its target is what is checked); a
            // link to a user's file is refused as that file is; a file past the bound is no salt.
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&good, &link).unwrap();
            assert_eq!(read_salt(&link).unwrap(), read_salt(&good).unwrap());
            let to_users = dir.path().join("to-users");
            std::os::unix::fs::symlink(&not_root, &to_users).unwrap();
            assert!(matches!(
                read_salt(&to_users),
                Err(SaltError::NotRootOwned { uid: 1, .. })
            ));
            let big = write("big", &vec![b'x'; 64 << 10 | 1], 0o600);
            let err = read_salt(&big).unwrap_err();
            assert!(matches!(err, SaltError::TooLarge { .. }), "{err}");
            assert!(err.to_string().starts_with(FLAG), "{err}");
        }
        let missing = read_salt(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, SaltError::Read { .. }));
        assert!(missing.to_string().starts_with(FLAG), "{missing}");
        assert!(matches!(
            read_salt(dir.path()),
            Err(SaltError::NotAFile { .. }) | Err(SaltError::NotRootOwned { .. })
        ));
    }

    #[test]
    fn accounts_and_images_are_hashed_wherever_they_are() {
        let on = Privacy::with_salt(b"0123456789abcdef0123", vec![]);
        let image = on.chosen(Chosen::Image, "/srv/images/lolcow.sif");
        assert!(image.starts_with("p-") && image.len() == 18, "{image}");
        let account = on.chosen(Chosen::Account, "proj-secret");
        assert!(account.starts_with("a-"), "{account}");
        // Published once: the same value is not hashed again (a restart republishes).
        assert_eq!(on.chosen(Chosen::Image, &image), image);
        assert_eq!(on.chosen(Chosen::Account, ""), "");
        let off = Privacy::off();
        assert_eq!(off.chosen(Chosen::Account, "proj"), "proj");
    }
}
