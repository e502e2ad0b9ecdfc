//! Throwaway certificates for the TLS tests, made with rcgen in the test's folder, and a
//! balancer started with a TLS listener.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::{spawn, wait_until, Proc, TestDir, START_TIMEOUT};

/// A CA's certificate, and a certificate and key it signed, as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a certificate signed by it for `names` (host names or IP addresses),
/// already expired when `expired`; writes `<tag>-ca.pem`, `<tag>-cert.pem` and
/// `<tag>-key.pem` in `dir`.
pub fn make(dir: &Path, tag: &str, names: &[&str], expired: bool) -> Certs {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Each CA its own name: a verifier looks issuers up by name.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("minilb test CA {tag}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let certs = Certs {
        ca: dir.join(format!("{tag}-ca.pem")),
        cert: dir.join(format!("{tag}-cert.pem")),
        key: dir.join(format!("{tag}-key.pem")),
    };
    fs::write(&certs.ca, ca_cert.pem()).unwrap();
    fs::write(&certs.cert, cert.pem()).unwrap();
    fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}

/// Starts the balancer on port 0 with a TLS listener (also on port 0) using `certs`, and waits
/// until `servers` servers are in its pool. Its `addrs` are: plain, admin, TLS.
pub fn start_tls_balancer(dir: &TestDir, servers: usize, certs: &Certs, extra: &[&str]) -> Proc {
    let mut args: Vec<String> =
        ["--port", "0", "--admin-port", "0", "--tls-port", "0", "--servers-file", "servers.json"]
            .map(String::from)
            .to_vec();
    args.extend(["--tls-cert".into(), path(&certs.cert)]);
    args.extend(["--tls-key".into(), path(&certs.key)]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let lb = spawn(
        env!("CARGO_BIN_EXE_loadbalancer"),
        &args,
        dir.path.join("loadbalancer.log"),
        &dir.path,
        3,
    );
    wait_until(START_TIMEOUT, || lb.log_text().matches("Connected to server").count() >= servers);
    lb
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
