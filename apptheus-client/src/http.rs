//! Reading the daemon's `/api/containers`, over HTTP or HTTPS, with basic auth when given.
use std::{path::Path, time::Duration};

use apptheus_api::Containers;
use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// A request that takes longer than this has failed (the daemon answers in milliseconds).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot read the password file {path}: {reason}")]
    PasswordFile { path: String, reason: String },
    #[error(
        "{url}: 401 Unauthorized: the daemon wants basic auth (--auth.user and --auth.password-file)"
    )]
    NoCredentials { url: String },
    #[error("{url}: 401 Unauthorized: the user name or password was refused")]
    Refused { url: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach the daemon at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: not the containers' JSON: {reason}")]
    Format { url: String, reason: String },
}

/// How to reach the daemon.
pub struct Options<'a> {
    /// `http://host:port` or `https://host:port`.
    pub address: &'a str,
    pub ca_file: Option<&'a Path>,
    pub insecure_skip_verify: bool,
    pub user: Option<&'a str>,
    pub password_file: Option<&'a Path>,
}

pub struct Client {
    agent: ureq::Agent,
    url: String,
    authorization: Option<String>,
}

impl Client {
    pub fn new(o: &Options<'_>) -> Result<Client, Error> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = o.ca_file {
            tls = tls.root_certs(RootCerts::new_with_certs(&ca_certificates(path)?));
        }
        if o.insecure_skip_verify {
            tls = tls.disable_verification(true);
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            // Every status is an answer to explain, not an opaque error.
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        let authorization = match (o.user, o.password_file) {
            (Some(user), Some(file)) => Some(basic(user, &password(file)?)),
            (Some(user), None) => Some(basic(user, "")),
            _ => None,
        };
        Ok(Client {
            agent,
            // The points are for the page's charts; the table needs none.
            url: format!(
                "{}/api/containers?history=0",
                o.address.trim_end_matches('/')
            ),
            authorization,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The containers, as the daemon sees them now.
    pub fn fetch(&self) -> Result<Containers, Error> {
        let url = self.url.clone();
        let mut req = self.agent.get(&self.url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let (status, body) = call(req, BODY_LIMIT).map_err(|reason| Error::Unreachable {
            url: url.clone(),
            reason,
        })?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| Error::Format {
                url,
                reason: e.to_string(),
            }),
            401 if self.authorization.is_none() => Err(Error::NoCredentials { url }),
            401 => Err(Error::Refused { url }),
            _ => Err(Error::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
            }),
        }
    }
}

/// The largest answer read (ureq's own default, 10 MB, is below a node's 10,000 containers).
pub const BODY_LIMIT: u64 = 64 << 20;

/// Send `req` and read its answer, whatever its status: (status, body), or why it failed.
pub fn call(
    req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    limit: u64,
) -> Result<(u16, Vec<u8>), String> {
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// The certificates of a PEM file.
fn ca_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Error> {
    let err = |reason: String| Error::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| err(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(certs)
}

/// The password: the file's first line (a trailing newline is not part of it).
fn password(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::PasswordFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {creds}")
}
