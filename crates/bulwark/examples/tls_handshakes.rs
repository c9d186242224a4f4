//! Full TLS handshakes per second against a running Bulwark, with the X25519MLKEM768
//! hybrid and with classic X25519, alternating rounds so both see the same machine:
//! `tls_handshakes ADDR CA.pem [ROUNDS]`. Prints one JSON line per key exchange.
//! Run by `bench/tls.sh`.

use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn config(
    ca: &str,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Microseconds for each of `n` fresh connections and handshakes (no resumption).
async fn handshakes(
    addr: &str,
    cfg: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(cfg));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        drop(tls);
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: tls_handshakes ADDR CA.pem [ROUNDS]")?;
    let ca = args
        .next()
        .ok_or("usage: tls_handshakes ADDR CA.pem [ROUNDS]")?;
    let rounds: usize = args.next().map_or(Ok(10), |r| r.parse())?;
    // Every connection is a full handshake: session resumption is off.
    let mut hybrid = config(&ca, vec![kx_group::X25519MLKEM768])?;
    let mut classic = config(&ca, vec![kx_group::X25519])?;
    for c in [&mut hybrid, &mut classic] {
        if let Some(c) = Arc::get_mut(c) {
            c.resumption = rustls::client::Resumption::disabled();
        }
    }
    let (mut h, mut x) = (Vec::new(), Vec::new());
    handshakes(&addr, &hybrid, 20).await?;
    handshakes(&addr, &classic, 20).await?;
    for _ in 0..rounds {
        h.extend(handshakes(&addr, &hybrid, 50).await?);
        x.extend(handshakes(&addr, &classic, 50).await?);
    }
    for (name, mut v) in [("X25519MLKEM768", h), ("X25519", x)] {
        v.sort_by(f64::total_cmp);
        let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        println!(
            "{{\"bench\": \"tls_handshake\", \"group\": \"{name}\", \"handshakes\": {}, \"p50_us\": {:.0}, \"p99_us\": {:.0}, \"per_second\": {:.0}}}",
            v.len(),
            p(0.5),
            p(0.99),
            1e6 / (v.iter().sum::<f64>() / v.len() as f64)
        );
    }
    Ok(())
}
