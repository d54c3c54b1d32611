//! A TLS terminator for loopback tests. A certificate authority made for the test signs a
//! certificate for `127.0.0.1` and `localhost`; the terminator accepts TLS connections with it
//! and relays the plain bytes to a real server behind it (s3s-fs, a receiver). The CA's
//! certificate is written to a PEM file, for `ca_cert` and `--ca-cert`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsFront {
    addr: SocketAddr,
    /// The CA's certificate, PEM.
    pub ca_pem: PathBuf,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free loopback port, relaying to `target`; writes the CA into `dir`.
    pub async fn start(target: SocketAddr, dir: &Path) -> TlsFront {
        let (ca_pem, acceptor) = authority(dir);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(relay(stream, acceptor, target, counted));
            }
        });
        TlsFront {
            addr,
            ca_pem,
            handshakes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How many TLS handshakes succeeded.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Completes the handshake (a client that refuses the certificate ends here), then relays.
async fn relay(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    target: SocketAddr,
    handshakes: Arc<AtomicUsize>,
) {
    let Ok(mut tls) = acceptor.accept(stream).await else {
        return;
    };
    handshakes.fetch_add(1, Ordering::SeqCst);
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
}

/// A new CA (its certificate written to `dir/ca.pem`) and an acceptor with a server
/// certificate it signed.
fn authority(dir: &Path) -> (PathBuf, TlsAcceptor) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Ferry test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let chain = vec![CertificateDer::from(server_cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (ca_pem, TlsAcceptor::from(Arc::new(config)))
}
