//! A throwaway PKI for the TLS tests (tests/web.rs, tests/glance.rs): a CA, a server
//! certificate for 127.0.0.1 and localhost, a client certificate, made with the openssl CLI.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use super::{Client, prometheus::tool};

pub fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PKI in a temporary directory: `ca.pem`, `server.pem`/`server.key` (SANs
/// 127.0.0.1 and localhost), `client.pem`/`client.key`, all made with the openssl CLI.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let openssl = tool("openssl", "openssl");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run_ok(
            Command::new(&openssl)
                .current_dir(d)
                .args([
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=apptheus test CA",
                ])
                .args(ec)
                .args(["-keyout", "ca.key", "-out", "ca.pem"]),
        );
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n",
            ),
            (
                "client",
                "subjectAltName=DNS:client.test\nextendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n",
            ),
        ] {
            run_ok(
                Command::new(&openssl)
                    .current_dir(d)
                    .args(["req", "-new", "-subj", &format!("/CN={name}")])
                    .args(ec)
                    .args(["-keyout", &format!("{name}.key")])
                    .args(["-out", &format!("{name}.csr")]),
            );
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            run_ok(
                Command::new(&openssl)
                    .current_dir(d)
                    .args([
                        "x509", "-req", "-days", "2", "-CA", "ca.pem", "-CAkey", "ca.key",
                    ])
                    .args(["-CAcreateserial", "-in", &format!("{name}.csr")])
                    .args(["-extfile", &format!("{name}.ext")])
                    .args(["-out", &format!("{name}.pem")]),
            );
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a web configuration file next to the certificates (so relative names resolve).
    pub fn config(&self, text: &str) -> PathBuf {
        let p = self
            .path(&super::unique("web") as &str)
            .with_extension("yml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A ureq client trusting this CA, optionally with basic auth and a client certificate.
    pub fn client(&self, auth: Option<(&str, &str)>, client_cert: bool) -> Client {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let ca = std::fs::read(self.path("ca.pem")).unwrap();
        let ca = Certificate::from_pem(&ca).unwrap();
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
        if client_cert {
            let cert = std::fs::read(self.path("client.pem")).unwrap();
            let key = std::fs::read(self.path("client.key")).unwrap();
            tls = tls.client_cert(Some(ClientCert::new_with_certs(
                &[Certificate::from_pem(&cert).unwrap()],
                PrivateKey::from_pem(&key).unwrap(),
            )));
        }
        Client {
            scheme: "https",
            agent: Client::agent_builder()
                .tls_config(tls.build())
                .build()
                .into(),
            authorization: auth.map(|(u, p)| basic(u, p)),
        }
    }
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
