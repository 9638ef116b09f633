//! Command-line flags of the `apptheus` daemon.
//!
//! The flag names are a public interface (see the contract): Prometheus-style long flags, the same
//! as the Go Apptheus where it had the flag. Every value is checked here, by a clap value parser,
//! so that a bad value stops the daemon at start with exit code 2 and a message naming the flag.
//! Only syntax is checked: whether a path exists or a port is free is the daemon's business.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apptheus_api::duration::parse_duration;

use crate::{
    collectors::Collectors,
    telemetry::{LogFormat, LogLevel},
};

/// Where a container's cgroup is made (`--cgroup.placement`): the cgroup module's own type.
pub use crate::cgroup::Placement;

const ABOUT: &str = "apptheus: per-container telemetry for HPC and batch hosts";

const LONG_ABOUT: &str = "apptheus: per-container telemetry for HPC and batch hosts.

A trusted launcher (Apptainer's starter, or apptheus-exec) connects to the gateway socket; \
apptheus gives the launcher's process tree a cgroup of its own, follows the tree with eBPF, and \
serves the container's CPU, memory, I/O and process metrics to Prometheus.

Durations use the Prometheus/Go syntax: 500ms, 0.5s, 2m, 1h30m, 1d, 1w, 1y.";

/// The flags of the daemon. Parse them with `<Args as clap::Parser>::parse()` (exits on error,
/// with code 2) or with [`parse_from`].
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "apptheus", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Address of the HTTP server, [host]:port; an empty host listens on all interfaces.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDRESS",
        default_value = ":9091",
        value_parser = parse_listen_address
    )]
    pub web_listen_address: ListenAddress,

    /// Path of the metrics endpoint.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        default_value = "/metrics",
        value_parser = parse_telemetry_path
    )]
    pub web_telemetry_path: String,

    /// Exporter-toolkit web configuration file (TLS, basic authentication).
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Unix socket the launchers connect to.
    #[arg(
        long = "socket.path",
        value_name = "PATH",
        default_value = "/run/apptheus/gateway.sock",
        value_parser = parse_socket_path
    )]
    pub socket_path: PathBuf,

    /// Unix socket of read-only queries (each user sees their own containers; root and
    /// --query.admin-group see all); an empty value turns it off.
    #[arg(
        long = "query.socket-path",
        value_name = "PATH",
        default_value = "/run/apptheus/query.sock",
        value_parser = parse_query_socket_path
    )]
    pub query_socket_path: QuerySocket,

    /// A group whose members see every container through the query socket, as root does
    /// [default: none]
    #[arg(
        long = "query.admin-group",
        value_name = "NAME",
        value_parser = parse_group_name
    )]
    pub query_admin_group: Option<String>,

    /// Trusted launcher executables: absolute paths separated by ';' [default: none, trust nothing]
    #[arg(
        long = "trust.path",
        value_name = "PATHS",
        default_value = "",
        hide_default_value = true,
        value_parser = parse_trust_paths
    )]
    pub trust_path: TrustPaths,

    /// Cgroup sampling interval (--monitor.inverval, the Go spelling, is accepted too).
    #[arg(
        long = "monitor.interval",
        alias = "monitor.inverval",
        value_name = "DURATION",
        default_value = "0.5s",
        value_parser = parse_positive_duration
    )]
    pub monitor_interval: Duration,

    /// Where a container's cgroup is made.
    #[arg(
        long = "cgroup.placement",
        value_name = "PLACEMENT",
        value_enum,
        default_value_t = Placement::Nested
    )]
    pub cgroup_placement: Placement,

    /// Directory, inside the placement's base, that holds the containers' cgroups.
    #[arg(
        long = "cgroup.parent",
        value_name = "NAME",
        default_value = "apptheus",
        value_parser = parse_cgroup_parent
    )]
    pub cgroup_parent: String,

    /// How long the series of a finished container stay visible before removal.
    #[arg(
        long = "container.retention",
        value_name = "DURATION",
        default_value = "2m",
        value_parser = parse_duration
    )]
    pub container_retention: Duration,

    /// Append one JSON line per ended container (its summary) to this file [default: none]
    #[arg(
        long = "container.summary-file",
        value_name = "FILE",
        value_parser = parse_summary_file
    )]
    pub container_summary_file: Option<PathBuf>,

    /// Metric groups not to read or export, separated by ',': io, processes, pressure,
    /// throttling, memory_events, network [default: none]
    #[arg(
        long = "collector.disable",
        value_name = "GROUPS",
        default_value = "",
        hide_default_value = true,
        value_parser = Collectors::disabling
    )]
    pub collector_disable: Collectors,

    /// Most containers alive at once; launchers beyond it are turned away.
    #[arg(
        long = "gateway.max-containers",
        value_name = "COUNT",
        default_value = "4096",
        value_parser = parse_count::<usize>
    )]
    pub gateway_max_containers: usize,

    /// Most containers alive at once for one user (uid); their further launchers are turned
    /// away, so that one user cannot take every container from the others.
    #[arg(
        long = "gateway.max-containers-per-user",
        value_name = "COUNT",
        default_value = "1024",
        value_parser = parse_count::<usize>
    )]
    pub gateway_max_containers_per_user: usize,

    /// Containers one user may start per second (sustained); see
    /// --gateway.admission-burst-per-user. Launchers beyond it wait their turn (see
    /// --gateway.admission-max-wait).
    #[arg(
        long = "gateway.admission-rate-per-user",
        value_name = "PER_SECOND",
        default_value = "50",
        value_parser = parse_rate
    )]
    pub gateway_admission_rate_per_user: f64,

    /// Containers one user may start at once before --gateway.admission-rate-per-user applies.
    #[arg(
        long = "gateway.admission-burst-per-user",
        value_name = "COUNT",
        default_value = "256",
        value_parser = parse_count::<u32>
    )]
    pub gateway_admission_burst_per_user: u32,

    /// Longest a launcher over its user's admission rate waits for its turn; one that would
    /// wait longer is refused at once.
    #[arg(
        long = "gateway.admission-max-wait",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub gateway_admission_max_wait: Duration,

    /// Ended containers kept for --container.retention, in all; beyond it the oldest are
    /// forgotten early.
    #[arg(
        long = "container.max-retained",
        value_name = "COUNT",
        default_value = "4096",
        value_parser = parse_count::<usize>
    )]
    pub container_max_retained: usize,

    /// Ended containers kept for --container.retention, per user; beyond it that user's oldest
    /// are forgotten early.
    #[arg(
        long = "container.max-retained-per-user",
        value_name = "COUNT",
        default_value = "1024",
        value_parser = parse_count::<usize>
    )]
    pub container_max_retained_per_user: usize,

    /// Processes one container's fork hook tracks (besides those it had when admitted); a child
    /// forked past it is not tracked (counted in apptheus_container_untracked_processes_total)
    /// but still lives, and is measured, in the container's cgroup.
    #[arg(
        long = "container.max-processes",
        value_name = "COUNT",
        default_value = "16384",
        value_parser = parse_count::<u64>
    )]
    pub container_max_processes: u64,

    /// Processes tracked at once over all containers: the size of the kernel's map of tracked
    /// processes (about 70 bytes each, allocated at start; at most 1048576).
    #[arg(
        long = "tracker.max-processes",
        value_name = "COUNT",
        default_value = "131072",
        value_parser = parse_max_processes
    )]
    pub tracker_max_processes: usize,

    /// Directory for the daemon's state.
    #[arg(
        long = "state.dir",
        value_name = "DIR",
        default_value = "/var/lib/apptheus",
        value_parser = parse_absolute_path
    )]
    pub state_dir: PathBuf,

    /// Least severe level logged.
    #[arg(long = "log.level", value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Format of the log lines on stderr.
    #[arg(long = "log.format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,

    /// Publish user names, uids (also those in cgroup paths) and home-directory paths as keyed
    /// hashes (HMAC-SHA256, u-/p- and 16 hex digits), keyed with the salt in FILE: root's, mode
    /// 0600 or 0400, 16 bytes or more. Nodes sharing the salt publish the same hashes [default:
    /// off, values in clear]
    #[arg(
        long = "privacy.hash-salt-file",
        value_name = "FILE",
        value_parser = parse_absolute_path
    )]
    pub privacy_hash_salt_file: Option<PathBuf>,
}

/// `--web.listen-address`: `[host]:port`. The host is kept unresolved (a name may resolve
/// differently later); `host == None` means all interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// An IPv4 or IPv6 literal (without brackets) or a host name; `None` for all interfaces.
    pub host: Option<String>,
    /// 0 lets the kernel choose a free port.
    pub port: u16,
}

impl ListenAddress {
    /// The addresses to try to bind, in order; bind the first that works (as
    /// `std::net::TcpListener::bind` and tokio's `TcpListener::bind(&addrs[..])` do).
    ///
    /// All interfaces is `[::]` first, which on Linux also accepts IPv4, then `0.0.0.0` for hosts
    /// without IPv6. A host name is resolved now, through the system's resolver.
    pub fn to_socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let Some(host) = &self.host else {
            return Ok(vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port),
            ]);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs: Vec<SocketAddr> = (host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve host {host:?}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("host {host:?} resolves to no address"),
            ));
        }
        Ok(addrs)
    }
}

impl fmt::Display for ListenAddress {
    /// The flag's own syntax, so that logs show what the user would type.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            None => write!(f, ":{}", self.port),
            Some(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            Some(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

/// `--trust.path`: the trusted launcher executables, each an absolute path; empty trusts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPaths(pub Vec<PathBuf>);

impl TrustPaths {
    pub fn paths(&self) -> &[PathBuf] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses the flags in `itr`, whose first item is the program name (as in `std::env::args_os`).
/// Does not exit: `--help` and `--version` come back as errors of kind `DisplayHelp` and
/// `DisplayVersion`.
pub fn parse_from<I, T>(itr: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    <Args as clap::Parser>::try_parse_from(itr)
}

/// The length limit of a unix socket path on Linux: `sockaddr_un.sun_path` holds 108 bytes,
/// the last of which must be the terminating NUL.
const SOCKET_PATH_MAX: usize = 107;

/// A cgroup directory name is a file name: at most NAME_MAX bytes.
const NAME_MAX: usize = 255;

/// The HTTP paths the daemon serves itself; the metrics endpoint must not hide them.
const RESERVED_HTTP_PATHS: [&str; 2] = ["/-/healthy", "/-/ready"];

/// `--monitor.interval`: a duration above zero (a zero interval would spin).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let duration = parse_duration(s).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(duration)
}

/// `--web.listen-address`: `host:port`, `[ipv6]:port` or `:port`.
fn parse_listen_address(s: &str) -> Result<ListenAddress, String> {
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port)?;
    let host = if host.is_empty() {
        None
    } else {
        check_host(host)?;
        Some(host.to_string())
    };
    Ok(ListenAddress { host, port })
}

/// Splits `[host]:port` like Go's net.SplitHostPort: an IPv6 host must be in brackets.
fn split_host_port(s: &str) -> Result<(&str, &str), String> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after ']', e.g. [::1]:9091")?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in brackets is not an IPv6 address"));
        }
        return Ok((host, port));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or("expected [host]:port, e.g. :9091 or 127.0.0.1:9091")?;
    if host.contains(':') {
        return Err("an IPv6 address must be in brackets, e.g. [::1]:9091".to_string());
    }
    Ok((host, port))
}

fn parse_port(port: &str) -> Result<u16, String> {
    // u16::from_str would also take "+80"; a port is plain digits.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number from 0 to 65535"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))
}

/// A host is an IP literal or a DNS name (dot-separated labels of letters, digits, '-', '_').
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    Ok(())
}

/// `--web.telemetry-path`: an absolute URL path the router can match literally.
fn parse_telemetry_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err("must start with '/'".to_string());
    }
    if RESERVED_HTTP_PATHS.contains(&s) {
        return Err(format!("{s} is served by apptheus itself"));
    }
    // RFC 3986 path characters, less '%' (an encoded path would not match what clients send
    // decoded), ':' and '*' (route syntax in some routers).
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~/!$&'()+,;=@".contains(c);
    if let Some(bad) = s.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "{bad:?} is not allowed; use letters, digits and -._~/!$&'()+,;=@"
        ));
    }
    // Clients normalise "." and ".." segments away, and "//" is easily mangled by proxies, so
    // such a path could never be reached as written.
    let segments: Vec<&str> = s[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let trailing_slash = segment.is_empty() && i + 1 == segments.len();
        if *segment == "." || *segment == ".." || (segment.is_empty() && !trailing_slash) {
            return Err("must not contain empty, '.' or '..' segments".to_string());
        }
    }
    Ok(s.to_string())
}

/// A path flag that must be absolute, because the daemon's working directory is no business of
/// the administrator.
fn parse_absolute_path(s: &str) -> Result<PathBuf, String> {
    let path = Path::new(s);
    if !path.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(path.to_path_buf())
}

/// `--container.summary-file`: absolute, naming a file (not a directory).
fn parse_summary_file(s: &str) -> Result<PathBuf, String> {
    let path = parse_absolute_path(s)?;
    if path.file_name().is_none() || s.ends_with('/') {
        return Err(format!("{s:?} does not name a file"));
    }
    Ok(path)
}

/// `--socket.path`: absolute, naming a file, and short enough for `sockaddr_un`.
fn parse_socket_path(s: &str) -> Result<PathBuf, String> {
    let path = parse_absolute_path(s)?;
    if path.file_name().is_none() {
        return Err(format!("{s:?} does not name a file"));
    }
    if s.len() > SOCKET_PATH_MAX {
        return Err(format!(
            "{} bytes long; a unix socket path holds at most {SOCKET_PATH_MAX}",
            s.len()
        ));
    }
    Ok(path)
}

/// `--query.socket-path`: where the query socket listens, or nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySocket(pub Option<PathBuf>);

/// `--query.socket-path`: empty (off), or a socket path as `--socket.path`.
fn parse_query_socket_path(s: &str) -> Result<QuerySocket, String> {
    if s.is_empty() {
        return Ok(QuerySocket(None));
    }
    parse_socket_path(s).map(|p| QuerySocket(Some(p)))
}

/// `--query.admin-group`: a group name (looked up at start): no control characters, no ':'.
fn parse_group_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 256 {
        return Err("a group name of 1 to 256 bytes".into());
    }
    if s.chars().any(|c| c.is_control() || c == ':' || c == '/') {
        return Err(format!("{s:?} is not a group name"));
    }
    Ok(s.to_string())
}

/// `--trust.path`: `;`-separated; entries are trimmed and empty ones ignored, so that
/// `"/a; /b;"` works as meant.
fn parse_trust_paths(s: &str) -> Result<TrustPaths, String> {
    let mut paths = Vec::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let path = parse_absolute_path(entry)
            .map_err(|e| format!("{e} (every trusted executable must be absolute)"))?;
        paths.push(path);
    }
    Ok(TrustPaths(paths))
}

/// `--cgroup.parent`: one directory name, made in every cgroup hierarchy.
fn parse_cgroup_parent(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a directory name"));
    }
    if s.contains('/') {
        return Err("must be a single directory name, without '/'".to_string());
    }
    // The kernel refuses cgroup names with a newline; NUL cannot reach a path at all.
    if s.contains(['\n', '\0']) {
        return Err("must not contain a newline or NUL".to_string());
    }
    if s.len() > NAME_MAX {
        return Err(format!("longer than {NAME_MAX} bytes"));
    }
    Ok(s.to_string())
}

/// `--tracker.max-processes`: between 1 and the largest map the daemon makes.
fn parse_max_processes(s: &str) -> Result<usize, String> {
    let count: usize = parse_count(s)?;
    let max = crate::tracker::MAX_PROCESSES;
    if count > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(count)
}

/// A rate per second: a finite number above 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err("must be a number above 0".to_string());
    }
    Ok(rate)
}

/// `--gateway.max-containers` and the other counts and bursts: a whole number, at least 1.
fn parse_count<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    let count: T = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if count < T::from(1) {
        return Err("must be at least 1".to_string());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        parse_from(std::iter::once("apptheus").chain(flags.iter().copied()))
    }

    fn parse_ok(flags: &[&str]) -> Args {
        parse(flags).unwrap_or_else(|e| panic!("{flags:?} should parse: {e}"))
    }

    /// Asserts that `--<flag>=<value>` fails as a bad value whose message names `named`.
    /// The `=` form keeps clap from taking a value such as "-1" for a flag.
    fn assert_bad_value_named(flag: &str, value: &str, named: &str) {
        let flag_and_value = format!("{flag}={value}");
        let err = match parse(&[&flag_and_value]) {
            Ok(args) => panic!("{flag_and_value:?} should fail, got {args:?}"),
            Err(e) => e,
        };
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ),
            "{flag_and_value:?}: {err}"
        );
        assert_eq!(err.exit_code(), 2);
        let message = err.to_string();
        assert!(
            message.contains(&format!("'{named} <")),
            "{flag_and_value:?}: message does not name {named}: {message}"
        );
    }

    fn assert_bad_value(flag: &str, value: &str) {
        assert_bad_value_named(flag, value, flag);
    }

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = parse_ok(&[]);
        assert_eq!(
            args.web_listen_address,
            ListenAddress {
                host: None,
                port: 9091
            }
        );
        assert_eq!(args.web_telemetry_path, "/metrics");
        assert_eq!(args.web_config_file, None);
        assert_eq!(
            args.socket_path,
            PathBuf::from("/run/apptheus/gateway.sock")
        );
        assert!(args.trust_path.is_empty());
        assert_eq!(args.monitor_interval, Duration::from_millis(500));
        assert_eq!(args.cgroup_placement, Placement::Nested);
        assert_eq!(args.cgroup_parent, "apptheus");
        assert_eq!(args.container_retention, Duration::from_secs(120));
        assert_eq!(args.gateway_max_containers, 4096);
        assert_eq!(args.gateway_max_containers_per_user, 1024);
        assert_eq!(args.gateway_admission_rate_per_user, 50.0);
        assert_eq!(args.gateway_admission_burst_per_user, 256);
        assert_eq!(args.gateway_admission_max_wait, Duration::from_secs(30));
        assert_eq!(args.container_max_retained, 4096);
        assert_eq!(args.container_max_retained_per_user, 1024);
        assert_eq!(args.container_summary_file, None);
        assert_eq!(args.collector_disable, Collectors::default());
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/apptheus"));
        assert_eq!(args.log_level, LogLevel::Info);
        assert_eq!(args.log_format, LogFormat::Logfmt);
    }

    #[test]
    fn every_flag() {
        let args = parse_ok(&[
            "--web.listen-address=127.0.0.1:0",
            "--web.telemetry-path",
            "/custom/metrics",
            "--web.config.file",
            "/etc/apptheus/web.yml",
            "--socket.path",
            "/tmp/gw.sock",
            "--trust.path",
            "/usr/libexec/apptainer/bin/starter;/usr/bin/apptheus-exec",
            "--monitor.interval",
            "2s",
            "--cgroup.placement",
            "dedicated",
            "--cgroup.parent",
            "jobs",
            "--container.retention",
            "0",
            "--gateway.max-containers",
            "10",
            "--container.summary-file",
            "/var/log/apptheus/summary.jsonl",
            "--collector.disable",
            "pressure,network",
            "--state.dir",
            "/tmp/state",
            "--log.level",
            "debug",
            "--log.format",
            "json",
        ]);
        assert_eq!(
            args.web_listen_address,
            ListenAddress {
                host: Some("127.0.0.1".into()),
                port: 0
            }
        );
        assert_eq!(args.web_telemetry_path, "/custom/metrics");
        assert_eq!(
            args.web_config_file,
            Some(PathBuf::from("/etc/apptheus/web.yml"))
        );
        assert_eq!(args.socket_path, PathBuf::from("/tmp/gw.sock"));
        assert_eq!(
            args.trust_path.paths(),
            [
                PathBuf::from("/usr/libexec/apptainer/bin/starter"),
                PathBuf::from("/usr/bin/apptheus-exec")
            ]
        );
        assert_eq!(args.monitor_interval, Duration::from_secs(2));
        assert_eq!(args.cgroup_placement, Placement::Dedicated);
        assert_eq!(args.cgroup_parent, "jobs");
        assert_eq!(args.container_retention, Duration::ZERO);
        assert_eq!(args.gateway_max_containers, 10);
        assert_eq!(
            args.container_summary_file,
            Some(PathBuf::from("/var/log/apptheus/summary.jsonl"))
        );
        assert_eq!(
            args.collector_disable.disabled_names(),
            ["pressure", "network"]
        );
        assert_eq!(args.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(args.log_level, LogLevel::Debug);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn log_levels_and_formats() {
        for (name, level, filter) in [
            ("debug", LogLevel::Debug, log::LevelFilter::Debug),
            ("info", LogLevel::Info, log::LevelFilter::Info),
            ("warn", LogLevel::Warn, log::LevelFilter::Warn),
            ("error", LogLevel::Error, log::LevelFilter::Error),
        ] {
            let args = parse_ok(&["--log.level", name]);
            assert_eq!(args.log_level, level);
            assert_eq!(level.log_filter(), filter);
            assert_eq!(level.level_filter().to_string(), name);
        }
        assert_eq!(
            parse_ok(&["--log.format", "logfmt"]).log_format,
            LogFormat::Logfmt
        );
        assert_bad_value("--log.level", "trace");
        assert_bad_value("--log.format", "text");
        assert_bad_value("--cgroup.placement", "root");
    }

    #[test]
    fn go_spelling_of_monitor_interval_is_an_alias() {
        let args = parse_ok(&["--monitor.inverval", "250ms"]);
        assert_eq!(args.monitor_interval, Duration::from_millis(250));
        assert_bad_value_named("--monitor.inverval", "abc", "--monitor.interval");
    }

    #[test]
    fn bad_durations_name_their_flag() {
        assert_bad_value("--monitor.interval", "abc");
        assert_bad_value("--monitor.interval", "0");
        assert_bad_value("--monitor.interval", "0s");
        assert_bad_value("--container.retention", "5");
        let err = parse(&["--monitor.interval", "abc"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid value 'abc' for '--monitor.interval <DURATION>'"),
            "{err}"
        );
    }

    #[test]
    fn listen_addresses() {
        let good: &[(&str, Option<&str>, u16)] = &[
            (":9091", None, 9091),
            ("127.0.0.1:0", Some("127.0.0.1"), 0),
            ("[::1]:9091", Some("::1"), 9091),
            ("[::]:80", Some("::"), 80),
            ("localhost:9091", Some("localhost"), 9091),
            (
                "metrics.example.org.:65535",
                Some("metrics.example.org."),
                65535,
            ),
        ];
        for (input, host, port) in good {
            let address = parse_ok(&["--web.listen-address", input]).web_listen_address;
            assert_eq!(address.host.as_deref(), *host, "{input}");
            assert_eq!(address.port, *port, "{input}");
            assert_eq!(address.to_string(), *input);
        }
        for bad in [
            "",
            "9091",
            ":",
            ":65536",
            ":-1",
            ":+80",
            ":http",
            "::1:9091",
            "[::1]",
            "[::1]9091",
            "[::1:9091",
            "[127.0.0.1]:9091",
            "host name:9091",
            "bad..host:9091",
            "-x/y:80",
        ] {
            assert_bad_value("--web.listen-address", bad);
        }
    }

    #[test]
    fn listen_address_to_socket_addrs() {
        let all = ListenAddress {
            host: None,
            port: 9091,
        };
        assert_eq!(
            all.to_socket_addrs().unwrap(),
            [
                "[::]:9091".parse::<SocketAddr>().unwrap(),
                "0.0.0.0:9091".parse().unwrap()
            ]
        );
        let v6 = ListenAddress {
            host: Some("::1".into()),
            port: 1,
        };
        assert_eq!(
            v6.to_socket_addrs().unwrap(),
            ["[::1]:1".parse::<SocketAddr>().unwrap()]
        );
        let v4 = ListenAddress {
            host: Some("127.0.0.1".into()),
            port: 0,
        };
        assert_eq!(
            v4.to_socket_addrs().unwrap(),
            ["127.0.0.1:0".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn telemetry_paths() {
        for good in ["/", "/metrics", "/a/b/metrics", "/metrics/", "/m-1_x.y~z"] {
            assert_eq!(
                parse_ok(&["--web.telemetry-path", good]).web_telemetry_path,
                good
            );
        }
        for bad in [
            "",
            "metrics",
            "/-/healthy",
            "/-/ready",
            "/a b",
            "/m?x=1",
            "/m#x",
            "/m%20",
            "/{id}",
            "/*all",
            "//metrics",
            "/a//b",
            "/./metrics",
            "/a/..",
        ] {
            assert_bad_value("--web.telemetry-path", bad);
        }
    }

    #[test]
    fn relative_paths_are_rejected() {
        assert_bad_value("--socket.path", "gateway.sock");
        assert_bad_value("--socket.path", "./gateway.sock");
        assert_bad_value("--socket.path", "/");
        assert_bad_value("--state.dir", "var/lib/apptheus");
        assert_bad_value("--trust.path", "/a;bin/starter");
        assert_bad_value("--trust.path", "starter");
    }

    #[test]
    fn socket_path_must_fit_sockaddr_un() {
        let longest = format!("/{}", "s".repeat(SOCKET_PATH_MAX - 1));
        assert_eq!(
            parse_ok(&["--socket.path", &longest]).socket_path,
            PathBuf::from(&longest)
        );
        let too_long = format!("{longest}s");
        assert_bad_value("--socket.path", &too_long);
    }

    #[test]
    fn trust_path_list_is_trimmed() {
        let args = parse_ok(&["--trust.path", "; /a ;/b;"]);
        assert_eq!(
            args.trust_path.paths(),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(parse_ok(&["--trust.path", " ; ;"]).trust_path.is_empty());
        assert!(parse_ok(&["--trust.path", ""]).trust_path.is_empty());
    }

    #[test]
    fn cgroup_parent_is_one_name() {
        assert_eq!(
            parse_ok(&["--cgroup.parent", "apptheus.slice"]).cgroup_parent,
            "apptheus.slice"
        );
        let too_long = "x".repeat(NAME_MAX + 1);
        for bad in ["", ".", "..", "a/b", "/apptheus", "a\nb", too_long.as_str()] {
            assert_bad_value("--cgroup.parent", bad);
        }
    }

    #[test]
    fn max_containers_is_at_least_one() {
        assert_eq!(
            parse_ok(&["--gateway.max-containers", "1"]).gateway_max_containers,
            1
        );
        for bad in ["0", "-1", "x", ""] {
            assert_bad_value("--gateway.max-containers", bad);
        }
    }

    #[test]
    fn collectors_and_summary_file() {
        assert_bad_value("--collector.disable", "pressure,psi");
        assert_bad_value("--collector.disable", "PRESSURE");
        let err = parse(&["--collector.disable=bogus"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown collector \"bogus\""), "{err}");
        assert!(err.contains("memory_events"), "{err}");
        assert_bad_value("--container.summary-file", "summary.jsonl");
        assert_bad_value("--container.summary-file", "/var/log/");
        assert_bad_value("--container.summary-file", "/");
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let err = parse(&["--web.listen-addr", ":1"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_query_socket_is_on_by_default_and_an_empty_path_turns_it_off() {
        let args = parse_ok(&[]);
        assert_eq!(
            args.query_socket_path,
            QuerySocket(Some("/run/apptheus/query.sock".into()))
        );
        assert_eq!(args.query_admin_group, None);
        assert_eq!(
            parse_ok(&["--query.socket-path="]).query_socket_path,
            QuerySocket(None)
        );
        assert_eq!(
            parse_ok(&["--query.admin-group=hpcadmin"]).query_admin_group,
            Some("hpcadmin".into())
        );
        assert_bad_value("--query.socket-path", "query.sock");
        assert_bad_value("--query.admin-group", "a:b");
        assert_bad_value("--query.admin-group", "a\nb");
    }

    #[test]
    fn privacy_salt_file_is_off_by_default_and_absolute() {
        assert_eq!(parse_ok(&[]).privacy_hash_salt_file, None);
        assert_eq!(
            parse_ok(&["--privacy.hash-salt-file=/etc/apptheus/salt"]).privacy_hash_salt_file,
            Some(PathBuf::from("/etc/apptheus/salt"))
        );
        assert_bad_value("--privacy.hash-salt-file", "salt");
    }

    #[test]
    fn help_and_version() {
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        let text = help.to_string();
        assert!(text.contains("per-container telemetry"), "{text}");
        assert!(text.contains("--monitor.interval <DURATION>"), "{text}");
        assert!(text.contains("[default: 0.5s]"), "{text}");
        assert!(!text.contains("[default: ]"), "{text}");
        let version = parse(&["--version"]).unwrap_err();
        assert_eq!(version.kind(), ErrorKind::DisplayVersion);
        assert!(version.to_string().contains(env!("CARGO_PKG_VERSION")));
    }
}
