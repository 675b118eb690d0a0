//! rustls client configuration from [`TlsOptions`].

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ClientError;
use crate::options::TlsOptions;

/// Builds the rustls configuration. The ring provider is passed explicitly
/// rather than installed process-wide, so an application embedding the
/// client keeps whatever default provider it chose.
pub(crate) fn client_config(tls: &TlsOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    if let Some(file) = &tls.ca_file {
        add_pem_file(&mut roots, file)?;
    }
    if let Some(dir) = &tls.ca_path {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ClientError::TlsConfig(format!("cannot read --capath {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_pem = path.extension().is_some_and(|e| e == "pem" || e == "crt")
                || path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".0"));
            if is_pem {
                add_pem_file(&mut roots, &path)?;
            }
        }
    }
    if tls.ca_file.is_none() && tls.ca_path.is_none() {
        // As mosquitto_pub does without --cafile: the system's authorities.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(ClientError::TlsConfig("no trusted certificate authority (give --cafile or --capath)".into()));
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let builder = if tls.insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyHostName(verifier)))
    } else {
        builder.with_webpki_verifier(verifier)
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ClientError::TlsConfig(format!("cannot read the certificate {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ClientError::TlsConfig(format!("cannot read the key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| ClientError::TlsConfig(e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ClientError::TlsConfig("a client certificate needs both --cert and --key".into())),
    };
    Ok(Arc::new(config))
}

fn add_pem_file(roots: &mut RootCertStore, file: &Path) -> Result<(), ClientError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::TlsConfig(format!("cannot read CA certificates from {}: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(ClientError::TlsConfig(format!("no certificate in {}", file.display())));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| ClientError::TlsConfig(format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

/// `--insecure`, as Mosquitto means it: the chain must still lead to a trusted
/// authority, but the certificate need not name the host we dialled.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
