//! The optional TLS listener: rustls on the aws-lc-rs provider.
//!
//! Key exchange offers the X25519MLKEM768 hybrid (ML-KEM-768 with X25519) first, so a
//! client that offers it too gets a post-quantum session; others get X25519, P-256 or
//! P-384. `require_post_quantum` narrows the server to the hybrid and TLS 1.3 only.
//!
//! Handshakes run in their own tasks, with a deadline, so a slow or silent client never
//! holds up the accept loop; finished connections reach the HTTP server through a
//! channel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond it, accepting waits (a flood of connections
/// that never finish their handshake cannot grow memory without bound).
const MAX_HANDSHAKES: usize = 1024;

/// Builds the rustls server configuration from `[server.tls]`. Errors name the file and
/// what is wrong with it.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "TLS certificate {}: {e} (expected a PEM certificate chain)",
                tls.cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no PEM `CERTIFICATE` block found",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        format!(
            "TLS private key {}: {e} (expected a PEM PKCS#8, PKCS#1 or SEC1 key)",
            tls.key.display()
        )
    })?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.require_post_quantum {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "TLS: certificate {} and key {} do not make a usable pair: {e}",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TCP connections (with `TCP_NODELAY`), completes TLS handshakes concurrently,
/// and hands finished connections to `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tls = TlsAcceptor::from(Arc::new(config));
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of
                        // spinning; per-connection errors just drop that connection.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(error = %e, "failed to set TCP_NODELAY on an accepted connection");
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(conn)) => {
                            let (_, session) = conn.get_ref();
                            tracing::debug!(
                                %peer,
                                version = ?session.protocol_version(),
                                group = ?session.negotiated_key_exchange_group().map(|g| g.name()),
                                "TLS session"
                            );
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task holds a sender for as long as it runs; it only stops when
            // this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
