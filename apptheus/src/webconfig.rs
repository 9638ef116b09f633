//! `--web.config.file`: the exporter-toolkit web configuration (TLS, basic auth, response headers,
//! rate limit), in the file format of Prometheus' exporter-toolkit
//! (`docs/web-configuration.md` there).
//!
//! [`WebConfig::parse`] is pure (no file access) and returns an error, never panics, whatever the
//! input: it is a fuzzing target. [`Web::load`] reads the file, resolves relative paths against
//! the file's directory (as exporter-toolkit does) and builds the TLS server configuration, which
//! reads the certificate and key files: everything is checked before the daemon starts.
//!
//! Like exporter-toolkit, unknown keys are errors. What rustls cannot do is refused by name
//! rather than silently ignored: TLS 1.0/1.1, CBC and RSA-key-exchange cipher suites, the curve
//! P-521, `client_allowed_sans`, and the client auth types that accept unverified certificates.
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::http::{HeaderName, HeaderValue};
use rustls::{
    CipherSuite, NamedGroup, RootCertStore, ServerConfig, SupportedCipherSuite,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;

use crate::safefile;

/// A configuration file larger than this is refused (real ones are a few hundred bytes; inline
/// certificates a few KiB).
const MAX_FILE_SIZE: u64 = 1 << 20;

// ------------------------------------------------------------------------- the file's schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<String>,
    #[serde(default)]
    client_allowed_sans: Option<Vec<String>>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
}

// ------------------------------------------------------------------------ the parsed config

/// A parsed, validated web configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// None: plain HTTP (exporter-toolkit too serves plain HTTP when no TLS field is set).
    pub tls: Option<TlsSettings>,
    /// Accepted for compatibility; the daemon serves HTTP/1.1 only (see docs/http.md).
    pub http2: bool,
    /// Extra response headers, from exporter-toolkit's fixed list: ready to insert, checked
    /// once here.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
}

/// PEM data: a file, or inline text in the configuration.
#[derive(Clone, PartialEq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            // The inline key is a secret: never print it.
            Pem::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

impl Curve {
    fn group(self) -> NamedGroup {
        match self {
            Curve::X25519 => NamedGroup::X25519,
            Curve::P256 => NamedGroup::secp256r1,
            Curve::P384 => NamedGroup::secp384r1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in the configured order; empty: rustls's defaults. TLS 1.3 suites are not
    /// configurable (as in Go).
    pub cipher_suites: Vec<CipherSuite>,
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in preference order; empty: rustls's defaults.
    pub curves: Vec<Curve>,
}

/// exporter-toolkit's token bucket: one request per `interval`, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// The headers exporter-toolkit lets a configuration set, with their allowed values (empty:
/// any value).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Go's TLS 1.2 cipher suite names that rustls implements (with the ring provider).
const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's TLS 1.3 suite names: accepted and, as in Go, without effect.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The rest of Go's `tls.CipherSuites()`: valid there, not implemented by rustls.
const UNSUPPORTED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// Treat `""` like an absent value, as Go's zero values do.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn tls_version(field: &str, v: Option<String>, default: TlsVersion) -> Result<TlsVersion> {
    match non_empty(v).as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(anyhow!(
            "tls_server_config.{field}: {v} is not supported (rustls implements TLS12 and TLS13)"
        )),
        Some(v) => Err(anyhow!(
            "tls_server_config.{field}: unknown TLS version {v:?} (expected TLS12 or TLS13)"
        )),
    }
}

fn pem_source(
    field: &str,
    file_field: &str,
    inline: Option<String>,
    file: Option<String>,
) -> Result<Option<Pem>> {
    match (non_empty(inline), non_empty(file)) {
        (Some(_), Some(_)) => {
            bail!("tls_server_config: set only one of {field} and {file_field}")
        }
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(path)) => Ok(Some(Pem::File(PathBuf::from(path)))),
        (None, None) => Ok(None),
    }
}

impl WebConfig {
    /// Parse and validate the text of a web configuration file. Pure: reads no file (relative
    /// paths stay relative; see [`WebConfig::resolve_paths`]). Never panics.
    pub fn parse(text: &str) -> Result<WebConfig> {
        let options = serde_saphyr::options! {
            // A one-line error, and no echo of the file's text (it can hold a private key).
            with_snippet: false,
        };
        // An empty file (or only comments) is an empty configuration, as in Go.
        // serde_path_to_error names the field of a type error ("basic_auth_users.alice: ...").
        let raw: Option<RawConfig> =
            serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    if path == "." {
                        inner
                    } else {
                        <serde_saphyr::Error as serde::de::Error>::custom(format!(
                            "{path}: {inner}"
                        ))
                    }
                })
            })
            .map_err(|e| anyhow!("{e}"))?;
        let raw = raw.unwrap_or(RawConfig {
            tls_server_config: None,
            http_server_config: None,
            basic_auth_users: None,
            rate_limit: None,
        });
        let tls = match raw.tls_server_config {
            Some(t) => parse_tls(t)?,
            None => None,
        };
        let (http2, headers) = match raw.http_server_config {
            Some(h) => (h.http2.unwrap_or(true), parse_headers(h.headers)?),
            None => (true, Vec::new()),
        };
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_bcrypt_hash(hash).with_context(|| format!("basic_auth_users.{user}"))?;
        }
        let rate_limit = match raw.rate_limit {
            Some(r) => parse_rate_limit(r)?,
            None => None,
        };
        Ok(WebConfig {
            tls,
            http2,
            headers,
            users,
            rate_limit,
        })
    }

    /// Make relative file paths relative to `dir` (the configuration file's directory).
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(tls) = &mut self.tls {
            for pem in [
                Some(&mut tls.cert),
                Some(&mut tls.key),
                tls.client_ca.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if let Pem::File(p) = pem
                    && p.is_relative()
                {
                    *p = dir.join(&*p);
                }
            }
        }
    }
}

fn parse_tls(t: RawTls) -> Result<Option<TlsSettings>> {
    let cert = pem_source("cert", "cert_file", t.cert, t.cert_file)?;
    let key = pem_source("key", "key_file", t.key, t.key_file)?;
    let client_ca = pem_source("client_ca", "client_ca_file", t.client_ca, t.client_ca_file)?;
    let client_auth_type = non_empty(t.client_auth_type);
    // exporter-toolkit's rule: TLS is on as soon as one of these is set.
    if cert.is_none() && key.is_none() && client_ca.is_none() && client_auth_type.is_none() {
        // The other TLS fields alone do not turn TLS on; still check their values.
        tls_version("min_version", t.min_version, TlsVersion::Tls12)?;
        tls_version("max_version", t.max_version, TlsVersion::Tls13)?;
        parse_cipher_suites(t.cipher_suites)?;
        parse_curves(t.curve_preferences)?;
        return Ok(None);
    }
    let cert = cert.context("tls_server_config: missing one of cert or cert_file")?;
    let key = key.context("tls_server_config: missing one of key or key_file")?;
    let client_auth = match client_auth_type.as_deref() {
        None | Some("NoClientCert") => ClientAuth::NoClientCert,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
        Some(v @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert")) => bail!(
            "tls_server_config.client_auth_type: {v} is not supported: it accepts certificates \
             nobody verified; use RequireAndVerifyClientCert with client_ca_file"
        ),
        Some(v) => bail!("tls_server_config.client_auth_type: invalid ClientAuth {v:?}"),
    };
    match (client_auth, &client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => bail!(
            "tls_server_config: client CA's have been configured without a Client Auth Policy \
             (client_auth_type)"
        ),
        (ClientAuth::NoClientCert, None) | (_, Some(_)) => {}
        (_, None) => bail!(
            "tls_server_config.client_auth_type: {client_auth:?} needs client_ca_file (or client_ca)"
        ),
    }
    if t.client_allowed_sans.is_some() {
        bail!(
            "tls_server_config.client_allowed_sans is not supported; use a client CA that signs only the allowed clients"
        );
    }
    let min_version = tls_version("min_version", t.min_version, TlsVersion::Tls12)?;
    let max_version = tls_version("max_version", t.max_version, TlsVersion::Tls13)?;
    if min_version > max_version {
        bail!("tls_server_config: min_version is above max_version");
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites: parse_cipher_suites(t.cipher_suites)?,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        curves: parse_curves(t.curve_preferences)?,
    }))
}

fn parse_cipher_suites(names: Option<Vec<String>>) -> Result<Vec<CipherSuite>> {
    let mut out = Vec::new();
    for name in names.unwrap_or_default() {
        if let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| *n == name) {
            if !out.contains(suite) {
                out.push(*suite);
            }
        } else if TLS13_SUITES.contains(&name.as_str()) {
            // Go ignores the list for TLS 1.3; so do we.
        } else if UNSUPPORTED_SUITES.contains(&name.as_str()) {
            bail!(
                "tls_server_config.cipher_suites: {name} is not supported (rustls implements only the ECDHE AES-GCM and ChaCha20-Poly1305 suites)"
            );
        } else {
            bail!("tls_server_config.cipher_suites: unknown cipher: {name}");
        }
    }
    Ok(out)
}

fn parse_curves(names: Option<Vec<String>>) -> Result<Vec<Curve>> {
    let mut out = Vec::new();
    for name in names.unwrap_or_default() {
        let curve = match name.as_str() {
            "X25519" => Curve::X25519,
            "CurveP256" => Curve::P256,
            "CurveP384" => Curve::P384,
            "CurveP521" => {
                bail!("tls_server_config.curve_preferences: CurveP521 is not supported by rustls")
            }
            _ => bail!("tls_server_config.curve_preferences: unknown curve: {name}"),
        };
        if !out.contains(&curve) {
            out.push(curve);
        }
    }
    Ok(out)
}

fn parse_headers(
    headers: Option<BTreeMap<String, String>>,
) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let mut out = Vec::new();
    for (name, value) in headers.unwrap_or_default() {
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
            bail!("http_server_config.headers: HTTP header {name:?} can not be configured");
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            bail!(
                "http_server_config.headers: invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"
            );
        }
        // Blank means unset (exporter-toolkit's documentation).
        if value.is_empty() {
            continue;
        }
        let Ok(value) = HeaderValue::from_str(&value) else {
            bail!("http_server_config.headers: {name}: not a valid header value");
        };
        // The allowed names are valid: this cannot fail, but is not unwrapped either.
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            anyhow!("http_server_config.headers: {name:?}: not a valid header name")
        })?;
        out.push((name, value));
    }
    Ok(out)
}

fn parse_rate_limit(r: RawRateLimit) -> Result<Option<RateLimit>> {
    let interval = match non_empty(r.interval) {
        None => Duration::ZERO,
        Some(s) => apptheus_api::duration::parse_duration(&s)
            .map_err(|e| anyhow!("rate_limit.interval: {e}"))?,
    };
    // Go: an interval of 0 disables the limiter.
    if interval.is_zero() {
        return Ok(None);
    }
    // Go's limiter with a burst of 0 refuses every request: surely not what was meant.
    let burst = r.burst.unwrap_or(0);
    if burst == 0 {
        bail!("rate_limit.burst: must be at least 1 when rate_limit.interval is set");
    }
    Ok(Some(RateLimit { interval, burst }))
}

/// A well-formed bcrypt hash with a cost bcrypt accepts. The check is syntactic: verifying a
/// password is slow and happens per request.
fn check_bcrypt_hash(hash: &str) -> Result<()> {
    let parts: bcrypt::HashParts = hash
        .parse()
        // The hash itself is not repeated: the message names the user instead.
        .map_err(|e| anyhow!("not a bcrypt hash ({e})"))?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        bail!("bcrypt cost {cost} is out of range (4 to 31)");
    }
    Ok(())
}

// ------------------------------------------------------------------------ loading and TLS

/// A loaded web configuration: the parsed file and, when it enables TLS, the rustls server
/// configuration built from it (certificate and key read at start).
#[derive(Clone)]
pub struct Web {
    pub config: WebConfig,
    pub tls: Option<Arc<ServerConfig>>,
}

impl fmt::Debug for Web {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Web")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Web {
    /// Read, parse and check `path`, build the TLS configuration. Errors name the flag and file.
    pub fn load(path: &Path) -> Result<Web> {
        Self::load_inner(path).with_context(|| format!("--web.config.file {}", path.display()))
    }

    fn load_inner(path: &Path) -> Result<Web> {
        let text = read_limited(path)?;
        let text = String::from_utf8(text).context("not UTF-8")?;
        let mut config = WebConfig::parse(&text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(dir);
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(server_config(t)?)),
            None => None,
        };
        Ok(Web { config, tls })
    }
}

/// The web config or a file it names: the administrator's, so a link is followed (certificates
/// live behind links), but only a regular file, and bounded.
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    Ok(safefile::read_named(path, MAX_FILE_SIZE)?)
}

fn pem_bytes(pem: &Pem, field: &str) -> Result<Vec<u8>> {
    match pem {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(p) => read_limited(p)
            .with_context(|| format!("tls_server_config.{field}_file ({})", p.display())),
    }
}

fn certificates(pem: &Pem, field: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = pem_bytes(pem, field)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("tls_server_config.{field}: bad PEM: {e}"))?;
    if certs.is_empty() {
        bail!("tls_server_config.{field}: no PEM certificate found");
    }
    Ok(certs)
}

/// The rustls configuration for `t`: reads the certificate, key and client CA.
fn server_config(t: &TlsSettings) -> Result<ServerConfig> {
    let certs = certificates(&t.cert, "cert")?;
    let key_pem = pem_bytes(&t.key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow!("tls_server_config.key: no usable PEM private key: {e}"))?;

    let mut provider = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let all = std::mem::take(&mut provider.cipher_suites);
        // TLS 1.3 suites as rustls orders them, then the TLS 1.2 ones in the configured order.
        let mut suites: Vec<SupportedCipherSuite> = all
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .collect();
        for want in &t.cipher_suites {
            suites.extend(all.iter().copied().filter(|s| s.suite() == *want));
        }
        provider.cipher_suites = suites;
    }
    if !t.curves.is_empty() {
        let all = std::mem::take(&mut provider.kx_groups);
        provider.kx_groups = t
            .curves
            .iter()
            .filter_map(|c| all.iter().copied().find(|g| g.name() == c.group()))
            .collect();
    }
    let provider: Arc<CryptoProvider> = Arc::new(provider);

    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match (t.min_version, t.max_version) {
            (TlsVersion::Tls12, TlsVersion::Tls12) => &[&rustls::version::TLS12],
            (TlsVersion::Tls13, _) => &[&rustls::version::TLS13],
            (TlsVersion::Tls12, TlsVersion::Tls13) => {
                &[&rustls::version::TLS13, &rustls::version::TLS12]
            }
        };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("tls_server_config: min_version/max_version/cipher_suites")?;
    let builder = match (&t.client_ca, t.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::NoClientCert => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| anyhow!("tls_server_config.client_ca: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| anyhow!("tls_server_config.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("tls_server_config: cert and key: {e}"))?;
    config.ignore_client_order = t.prefer_server_cipher_suites;
    // Only HTTP/1.1 is served: say so in ALPN, so an h2-capable client does not try h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at cost 4 (the minimum: fast tests).
    fn hash() -> String {
        bcrypt::hash("secret", 4).unwrap()
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_configs() {
        for text in ["", "# nothing\n", "---\n", "{}"] {
            let c = WebConfig::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:#}"));
            assert_eq!(c.tls, None);
            assert!(c.users.is_empty());
            assert!(c.http2);
        }
    }

    #[test]
    fn full_example_parses() {
        let text = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /etc/k.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  \
             min_version: TLS13\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n  \
             curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: false\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  alice: '{}'\n\
             rate_limit:\n  interval: 100ms\n  burst: 10\n",
            hash()
        );
        let mut c = WebConfig::parse(&text).unwrap();
        c.resolve_paths(Path::new("/etc/apptheus"));
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, Pem::File("/etc/apptheus/server.crt".into()));
        assert_eq!(tls.key, Pem::File("/etc/k.key".into()));
        assert_eq!(
            tls.client_ca,
            Some(Pem::File("/etc/apptheus/ca.pem".into()))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(
            tls.cipher_suites,
            vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        assert_eq!(tls.curves, vec![Curve::X25519, Curve::P256]);
        assert!(!tls.prefer_server_cipher_suites);
        assert!(!c.http2);
        assert_eq!(
            c.headers,
            [
                (
                    HeaderName::from_static("strict-transport-security"),
                    HeaderValue::from_static("max-age=31536000")
                ),
                (
                    HeaderName::from_static("x-frame-options"),
                    HeaderValue::from_static("deny")
                ),
            ]
        );
        assert!(c.users.contains_key("alice"));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                interval: Duration::from_millis(100),
                burst: 10
            })
        );
    }

    #[test]
    fn auth_only_config_is_plain_http() {
        let c = WebConfig::parse(&format!("basic_auth_users:\n  bob: {}\n", hash())).unwrap();
        assert_eq!(c.tls, None);
        assert_eq!(c.users.len(), 1);
    }

    /// Each bad input fails with a message containing the expected text.
    #[test]
    fn errors_name_the_field() {
        let h = hash();
        let cases: Vec<(String, &str)> = vec![
            ("nope: 1\n".into(), "nope"),
            ("tls_server_config:\n  cert_fil: a\n".into(), "cert_fil"),
            ("tls_server_config:\n  cert_file: a\n".into(), "key"),
            ("tls_server_config:\n  key_file: a\n".into(), "cert"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS11\n".into(),
                "min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n".into(),
                "min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n".into(),
                "max_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n".into(),
                "client_auth_type",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n".into(),
                "RequireAnyClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n".into(),
                "client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n".into(),
                "Client Auth Policy",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n".into(),
                "cipher_suites",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [FOO]\n".into(),
                "FOO",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n".into(),
                "curve_preferences",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  cert: x\n  key_file: b\n".into(),
                "cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n".into(),
                "client_allowed_sans",
            ),
            (
                "http_server_config:\n  headers:\n    X-Powered-By: me\n".into(),
                "X-Powered-By",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(),
                "X-Frame-Options",
            ),
            ("http_server_config:\n  http3: true\n".into(), "http3"),
            ("basic_auth_users:\n  carol: plain\n".into(), "carol"),
            ("basic_auth_users:\n  carol: [a]\n".into(), "basic_auth_users"),
            ("rate_limit:\n  interval: fast\n".into(), "rate_limit.interval"),
            (format!("basic_auth_users:\n  a: {h}\n  a: {h}\n"), "a"),
            ("tls_server_config: [1, 2]\n".into(), "tls_server_config"),
        ];
        for (text, want) in cases {
            let err = match WebConfig::parse(&text) {
                Ok(c) => panic!("accepted {text:?}: {c:?}"),
                Err(e) => format!("{e:#}"),
            };
            println!("{text:?} -> {err}");
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{text:?}: multi-line error {err:?}");
        }
    }

    /// The parser is a fuzzing target: mangled variants of a real file must never panic.
    #[test]
    fn mangled_inputs_never_panic() {
        let base = format!(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS12\n  \
             cipher_suites: [TLS_AES_128_GCM_SHA256]\nbasic_auth_users:\n  u: '{}'\n\
             http_server_config: {{http2: true, headers: {{X-Frame-Options: deny}}}}\n\
             rate_limit: {{interval: 1s, burst: 2}}\n&a [*a, !!binary x, ? y : z]\n",
            hash()
        );
        let bytes = base.as_bytes();
        // A small deterministic generator: no dependency, same cases every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = b"\0\n\t :-[]{}&*!|>'\"%@`#?,\\";
        for _ in 0..3000 {
            let mut v = bytes.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let pos = (next() as usize) % (v.len() + 1);
                match next() % 4 {
                    0 if pos < v.len() => {
                        v.remove(pos);
                    }
                    1 => v.insert(pos, specials[(next() as usize) % specials.len()]),
                    2 => v.truncate(pos),
                    _ => {
                        let (a, b) = (pos.min(v.len()), (next() as usize) % (v.len() + 1));
                        let chunk: Vec<u8> = v[a.min(b)..a.max(b)].to_vec();
                        v.splice(pos..pos, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&v);
            let _ = WebConfig::parse(&text);
        }
        // Deep nesting and alias bombs: errors, not stack overflows or hangs.
        let _ = WebConfig::parse(&"[".repeat(100_000));
        let _ = WebConfig::parse(&"- ".repeat(50_000));
        let bomb = (0..10)
            .map(|i| {
                let prev = if i == 0 {
                    "x".to_string()
                } else {
                    format!("*a{}", i - 1)
                };
                format!("a{i}: &a{i} [{prev},{prev},{prev},{prev},{prev},{prev},{prev},{prev}]\n")
            })
            .collect::<String>();
        assert!(WebConfig::parse(&bomb).is_err());
    }
}
