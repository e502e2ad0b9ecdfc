//! `cargo run --example make-certs -- DIR [NAME...]`: a throwaway CA and a certificate it
//! signed for NAMEs (default `127.0.0.1` and `localhost`), for the TLS demo
//! (`make run-cluster-tls`) and the TLS benchmark. Writes in DIR: `ca.pem` (give it to
//! clients: `client --tls --ca`), `cert.pem` and `key.pem` (the balancer's `--tls-cert` and
//! `--tls-key`), and `cert+key.pem` (both, as HAProxy's `crt` wants them).

use std::path::PathBuf;
use std::process::ExitCode;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: make-certs DIR [NAME...]");
        return ExitCode::from(2);
    };
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec!["127.0.0.1".into(), "localhost".into()];
    }
    match make(&dir, names) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make-certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(dir: &std::path::Path, names: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "minilb throwaway demo CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("cert.pem"), &cert)?;
    std::fs::write(dir.join("key.pem"), &key)?;
    std::fs::write(dir.join("cert+key.pem"), cert + &key)?;
    println!("certificates for the demo written to {}", dir.display());
    Ok(())
}
