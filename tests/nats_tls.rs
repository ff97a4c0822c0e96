//! TLS to NATS with certificates this test makes (a CA, a server
//! certificate for 127.0.0.1, a client certificate): the mesh serves over
//! mutual TLS; a client that does not trust the server's CA, or that has no
//! client certificate where the server asks for one, is refused with a
//! clear error instead of retrying until its deadline.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cortex_bus::{ConnectError, NatsOptions};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_testkit::{NatsServer, ServerOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use support::*;
use tempfile::TempDir;

/// Certificates and keys as PEM files in a temporary folder.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).unwrap();
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// `ca.pem`, `server.pem`/`server.key` (127.0.0.1 and localhost),
/// `client.pem`/`client.key`, and `other-ca.pem` from an unrelated CA.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority("cortex test CA");
    write(dir.path(), "ca.pem", &ca.pem());
    write(dir.path(), "other-ca.pem", &authority("someone else").pem());
    for (name, sans, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        write(dir.path(), &format!("{name}.pem"), &cert.pem());
        write(dir.path(), &format!("{name}.key"), &key.serialize_pem());
    }
    Pki { dir }
}

fn tls_server(pki: &Pki, verify_clients: bool) -> NatsServer {
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify_clients}\n  timeout: 2\n}}\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        pki.path("ca.pem").display(),
    );
    NatsServer::with_options(ServerOptions {
        extra_config: config,
        ..ServerOptions::default()
    })
}

fn options(server: &NatsServer, pki: &Pki, client_cert: bool) -> NatsOptions {
    let mut options = NatsOptions::new([server.url()]);
    options.tls_ca = Some(pki.path("ca.pem"));
    if client_cert {
        options.tls_cert = Some(pki.path("client.pem"));
        options.tls_key = Some(pki.path("client.key"));
    }
    options.connect_timeout = Duration::from_secs(10);
    options
}

/// Connecting fails soon (well before the 10 s retry window) with `check`.
async fn refused(options: NatsOptions, check: impl Fn(&ConnectError) -> bool) {
    let started = Instant::now();
    let error = options
        .connect("refused")
        .await
        .expect_err("must be refused");
    assert!(check(&error), "unexpected error: {error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_serves_over_mutual_tls() {
    let pki = make_pki();
    let server = tls_server(&pki, true);

    let mut config = NeuronConfig::for_tests(&server.url(), "tls-neuron");
    config.nats = options(&server, &pki, true);
    config.engine = EngineKind::Sim;
    config.models = vec!["m=sim".into()];
    let neuron = Neuron::start(config.clone(), config.nats.connect("neuron").await.unwrap())
        .await
        .unwrap();
    let mut config = IngressConfig::for_tests(&server.url());
    config.nats = options(&server, &pki, true);
    let ingress = Ingress::start(
        config.clone(),
        config.nats.connect("ingress").await.unwrap(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", ingress.addr);
    // The neuron loads `m` after it starts; the first 200 proves the path.
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let answer = chat(&base, "m", json!({"stream": true})).await;
        if answer.status == 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("data: [DONE]"), "{}", answer.body);

    // No client certificate where the server asks for one.
    refused(options(&server, &pki, false), |e| {
        matches!(e, ConnectError::Tls(_) | ConnectError::Auth(_))
    })
    .await;
    ingress.shutdown().await;
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outside_the_trusted_ca_is_refused() {
    let pki = make_pki();
    let server = tls_server(&pki, false);
    // Server-only TLS: the CA is enough.
    let client = options(&server, &pki, false)
        .connect("trusting")
        .await
        .unwrap();
    client.flush().await.unwrap();
    // A CA that did not sign the server's certificate.
    let mut other = options(&server, &pki, false);
    other.tls_ca = Some(pki.path("other-ca.pem"));
    refused(other, |e| matches!(e, ConnectError::Tls(_))).await;
    // No CA at all: the system roots do not know the test CA either.
    let mut none = options(&server, &pki, false);
    none.tls_ca = None;
    none.tls_required = true;
    refused(none, |e| matches!(e, ConnectError::Tls(_))).await;
    // A client without TLS settings to a TLS-only server is refused too:
    // it cannot verify the server.
    let mut plain = options(&server, &pki, false);
    plain.tls_ca = None;
    refused(plain, |e| matches!(e, ConnectError::Tls(_))).await;
}
