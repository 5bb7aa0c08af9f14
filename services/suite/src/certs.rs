//! `crm certs`: a private CA and one certificate per service for mutual TLS between the
//! services, laid out as Kubernetes TLS secrets (`ca.crt`, `tls.crt`, `tls.key`) so that
//! `kubectl create secret generic --from-file=DIR/SERVICE` takes a folder as it is. For
//! development and small clusters; with cert-manager, its `Certificate`s take this place.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Folder to write into: `ca.crt`, `ca.key`, and `SERVICE/{ca.crt,tls.crt,tls.key}`.
    #[arg(long)]
    pub out: PathBuf,
    /// The services to certify (repeatable); each certificate serves and calls.
    #[arg(long = "service", default_values_t = ["contact".to_owned(), "pipeline".to_owned(), "ticket".to_owned(), "analytics".to_owned()])]
    pub services: Vec<String>,
    /// The Kubernetes namespace, for the in-cluster names in each certificate.
    #[arg(long, default_value = "crm")]
    pub namespace: String,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// The names a service's certificate carries: its Service in every form a pod resolves,
/// and localhost for a process on the same machine.
fn names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks of other nodes that run slightly behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=3650).contains(&args.days), "--days must be 1 ..= 3650");
    anyhow::ensure!(
        is_dns_label(&args.namespace),
        "--namespace {:?} is not a DNS label",
        args.namespace
    );
    for service in &args.services {
        anyhow::ensure!(
            is_dns_label(service),
            "--service {service:?} is not a DNS label"
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut ca = CertificateParams::new(Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("crm {} services CA", args.namespace),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, args.days);
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    write(&args.out.join("ca.crt"), &ca_pem, false)?;
    write(&args.out.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    for service in &args.services {
        let mut params = CertificateParams::new(names(service, &args.namespace))?;
        params.distinguished_name.push(DnType::CommonName, service);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, args.days);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &issuer)?;
        let folder = args.out.join(service);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        write(&folder.join("ca.crt"), &ca_pem, false)?;
        write(&folder.join("tls.crt"), &certificate.pem(), false)?;
        write(&folder.join("tls.key"), &key.serialize_pem(), true)?;
    }
    println!(
        "wrote a CA and certificates for {} under {} (valid {} days)",
        args.services.join(", "),
        args.out.display(),
        args.days
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_written_as_tls_secrets() {
        let dir = tempfile::tempdir().unwrap();
        run(CertsArgs {
            out: dir.path().to_path_buf(),
            services: vec!["contact".into(), "pipeline".into()],
            namespace: "crm".into(),
            days: 30,
        })
        .unwrap();
        for service in ["contact", "pipeline"] {
            for file in ["ca.crt", "tls.crt", "tls.key"] {
                let text = std::fs::read_to_string(dir.path().join(service).join(file)).unwrap();
                assert!(text.starts_with("-----BEGIN"), "{service}/{file}");
            }
        }
        // The files are what the server and client settings accept.
        let folder = dir.path().join("contact");
        let server = crm_platform::config::ServerConfig {
            tls_cert_file: folder.join("tls.crt").to_string_lossy().into_owned(),
            tls_key_file: folder.join("tls.key").to_string_lossy().into_owned(),
            tls_client_ca_file: folder.join("ca.crt").to_string_lossy().into_owned(),
            ..Default::default()
        };
        assert!(crm_platform::tls::server_config(&server).unwrap().is_some());
    }

    #[test]
    fn bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (services, namespace, days) in [
            (vec!["Contact".to_owned()], "crm", 30),
            (vec!["contact".to_owned()], "crm.prod", 30),
            (vec!["contact".to_owned()], "crm", 0),
        ] {
            assert!(
                run(CertsArgs {
                    out: dir.path().to_path_buf(),
                    services,
                    namespace: namespace.into(),
                    days,
                })
                .is_err()
            );
        }
    }
}
