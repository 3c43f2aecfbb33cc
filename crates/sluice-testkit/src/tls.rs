//! HTTPS in front of a loopback server, for the tests that prove Sluice's clients speak TLS and
//! check certificates: a fresh certificate authority (its certificate written to `ca.pem`, to be
//! trusted through `SSL_CERT_FILE`) signs a certificate for `localhost` and `127.0.0.1`, and every
//! connection is decrypted and forwarded to the plain-HTTP backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls;

/// Makes a fresh CA (its certificate written to `dir/ca.pem`) and a certificate it signs for
/// `localhost` and `127.0.0.1`; returns that certificate and its key.
pub(crate) fn server_certificate(dir: &Path) -> (rcgen::Certificate, KeyPair) {
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Sluice test CA");
    let ca = ca.self_signed(&ca_key).expect("the CA certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("writing ca.pem");
    let key = KeyPair::generate().expect("a server key");
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server parameters")
        .signed_by(&key, &ca, &ca_key)
        .expect("the server certificate");
    (cert, key)
}

/// A TLS-terminating proxy on a loopback port; stops when dropped.
pub struct TlsProxy {
    port: u16,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsProxy {
    /// Serves HTTPS on a free loopback port, forwarding to `backend`.
    pub fn start(backend: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (cert, key) = server_certificate(dir.path());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("the server's TLS configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accepting = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A client that refuses the certificate ends its handshake here.
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            if let Ok(mut up) = tokio::net::TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accepting => {}
                    _ = stopped => {}
                }
            });
        });
        TlsProxy {
            port,
            dir,
            stop: Some(stop),
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the proxy's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory holding `ca.pem`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
