//! Certificate requests: `Credentials::sign_csr`, what the controller runs
//! for `berth cert sign` and `berth cert new` (SignCertificate), against a
//! real credential store and CA.
//!
//! The first byte is a set of flags: bit 0 set means the rest is DER and is
//! wrapped in a `CERTIFICATE REQUEST` PEM block here (so the fuzzer works on
//! the ASN.1 directly); clear means the rest is the PEM text as sent. Bit 1
//! asks for an admin scope instead of a user of `alpha`; bit 2 revokes the
//! certificate once signed.
//!
//! Invariants:
//! - a refusal is INVALID_ARGUMENT material (`CredentialError::Invalid`),
//!   one short line, never an internal or database error;
//! - a signed certificate is one PEM certificate, issued and signed by the
//!   controller's CA, for the request's CN and public key only: not a CA,
//!   key usage digitalSignature, extended key usage clientAuth only, no
//!   subject alternative names or other extensions from the request, no
//!   validity past the CA's;
//! - its record has the certificate's serial, the CN and the asked scope;
//! - the controller then accepts it as exactly that identity, and refuses it
//!   once revoked.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use berth_controller::auth::Via;
use berth_controller::auth::credentials::CredentialError;
use berth_fuzz::{admin_scope, fixture, user_scope};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

/// Extensions a signed client certificate may carry (by OID).
const ALLOWED_EXTENSIONS: [&str; 5] = [
    "2.5.29.14", // subjectKeyIdentifier
    "2.5.29.15", // keyUsage
    "2.5.29.19", // basicConstraints
    "2.5.29.35", // authorityKeyIdentifier
    "2.5.29.37", // extKeyUsage
];

fn pem_wrap(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let pem = if flags & 1 == 1 {
        pem_wrap(rest)
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let scope = if flags & 2 == 2 {
        admin_scope()
    } else {
        user_scope(&["alpha"])
    };
    let ttl = std::time::Duration::from_secs(3600);

    let signed = berth_fuzz::block_on(fx.credentials.sign_csr(&pem, scope.clone(), ttl));
    berth_fuzz::show(|| format!("flags {flags}: {:?}", signed.as_ref().map(|s| &s.1)));
    let (cert_pem, record) = match signed {
        Ok(signed) => signed,
        Err(err) => {
            assert!(matches!(err, CredentialError::Invalid(_)), "{err:?}");
            let message = err.to_string();
            assert!(!message.contains(['\n', '\r']), "{message:?}");
            assert!(
                message.len() <= 1024,
                "{} bytes: {message:.200}",
                message.len()
            );
            return;
        }
    };

    // What was asked for, read independently.
    let csr_der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .expect("a signed request is PEM");
    let (_, csr) =
        X509CertificationRequest::from_der(csr_der.as_ref()).expect("a signed request parses");
    let asked_cn = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("a signed request has a CN");

    // What was issued.
    let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the certificate is PEM");
    assert_eq!(certs.len(), 1, "{cert_pem}");
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).expect("parses");
    let (_, ca) = x509_parser::parse_x509_certificate(fx.ca.cert_der.as_ref()).expect("CA");

    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the controller's CA");
    assert_eq!(
        cert.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the request's public key"
    );
    let names: Vec<_> = cert.subject().iter_attributes().collect();
    assert_eq!(names.len(), 1, "subject {}", cert.subject());
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok());
    assert_eq!(cn, Some(asked_cn));
    assert_eq!(record.subject, asked_cn);
    assert_eq!(record.serial, hex(cert.raw_serial()));
    assert_eq!(record.scope, scope);
    assert!(!record.revoked);

    match cert.basic_constraints() {
        Ok(Some(bc)) => assert!(!bc.value.ca, "a CA certificate was issued"),
        Ok(None) => {}
        Err(e) => panic!("basicConstraints: {e}"),
    }
    let ku = cert.key_usage().expect("keyUsage").expect("has keyUsage");
    assert_eq!(ku.value.flags, 1, "keyUsage {}", ku.value);
    let eku = cert
        .extended_key_usage()
        .expect("EKU")
        .expect("has EKU")
        .value;
    assert!(eku.client_auth, "no clientAuth");
    assert!(
        !eku.any
            && !eku.server_auth
            && !eku.code_signing
            && !eku.email_protection
            && !eku.time_stamping
            && !eku.ocsp_signing
            && eku.other.is_empty(),
        "extra usages {eku:?}"
    );
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        assert!(
            ALLOWED_EXTENSIONS.contains(&oid.as_str()),
            "extension {oid}"
        );
    }
    assert!(cert.validity().not_after <= ca.validity().not_after);
    assert!(cert.validity().not_before <= cert.validity().not_after);

    let id = berth_fuzz::block_on(fx.credentials.verify_certificate(&certs[0]))
        .unwrap_or_else(|e| panic!("the controller refuses what it signed: {e}"));
    assert_eq!(id.subject, asked_cn);
    assert_eq!(id.scope, scope);
    assert_eq!(id.via, Via::Certificate);

    if flags & 4 == 4 {
        berth_fuzz::block_on(fx.credentials.revoke_cert(&record.serial))
            .expect("revoke what was signed");
        let after = berth_fuzz::block_on(fx.credentials.verify_certificate(&certs[0]));
        assert!(
            matches!(after, Err(CredentialError::Invalid(_))),
            "revoked certificate: {after:?}"
        );
    }
});
