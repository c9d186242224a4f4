//! The TLS listener: post-quantum hybrid key exchange with clients that offer it,
//! classic groups with others, real HTTPS clients (keep-alive and streaming), OpenSSL
//! interop, and clear errors for bad certificates.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bulwark_testkit::{Bulwark, MockUpstream};
use common::TempDir;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl (installed by scripts/setup.sh): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a P-256 server certificate it signed for `localhost` and
/// 127.0.0.1 (`cert.pem`, `key.pem`), made by `openssl`. Returns (cert, key, ca).
fn certificate(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=Bulwark test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ];
    ca.extend(ec);
    openssl(&ca, &dir.0);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ];
    csr.extend(ec);
    openssl(&csr, &dir.0);
    dir.write(
        "leaf.ext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        &dir.0,
    );
    (
        dir.0.join("cert.pem"),
        dir.0.join("key.pem"),
        dir.0.join("ca.pem"),
    )
}

async fn start_tls(dir: &TempDir, mock: &MockUpstream, extra: &str) -> (Bulwark, PathBuf) {
    let (cert, key, ca) = certificate(dir);
    let cfg = dir.write(
        "bulwark.toml",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n\
             [[upstreams]]\nname = \"mock\"\nbase_url = \"{}\"\nmodels = {{ \"m\" = \"mock-large\", \"drip\" = \"drip-20\" }}\n",
            cert.display(),
            key.display(),
            mock.base_url()
        ),
    );
    let b = Bulwark::start(Path::new(env!("CARGO_BIN_EXE_bulwark")), Some(&cfg), &[])
        .unwrap_or_else(|e| panic!("start bulwark: {e}"));
    assert_eq!(b.scheme, "https");
    (b, ca)
}

/// A rustls client offering exactly `groups`, trusting `cert`.
fn client_config(
    cert: &Path,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap_or_else(|e| panic!("{e}")) {
        roots
            .add(c.unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Handshakes, then sends two HTTP/1.1 requests on the one connection (keep-alive).
/// Returns the negotiated group's name and both responses, or the handshake error.
async fn handshake_and_get(
    b: &Bulwark,
    config: rustls::ClientConfig,
) -> Result<(String, Vec<String>), String> {
    let tcp = tokio::net::TcpStream::connect(b.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let group = session
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_default();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut answers = Vec::new();
    for _ in 0..2 {
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Ok((group, answers))
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiates_the_post_quantum_hybrid_and_classic_groups() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("tls-groups");
    let (b, cert) = start_tls(&dir, &mock, "").await;

    // A client offering the hybrid first (rustls' default) gets it.
    let (group, answers) = handshake_and_get(
        &b,
        client_config(&cert, aws_lc_rs::default_provider().kx_groups),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert_eq!(group, "X25519MLKEM768");
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }

    // Clients without ML-KEM get a classic group.
    for (offer, want) in [
        (kx_group::X25519, "X25519"),
        (kx_group::SECP256R1, "secp256r1"),
    ] {
        let (group, answers) = handshake_and_get(&b, client_config(&cert, vec![offer]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(group, want);
        assert!(answers[1].starts_with("HTTP/1.1 200"), "{}", answers[1]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_clients_chat_and_stream_through_the_listener() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("tls-chat");
    let (b, cert) = start_tls(&dir, &mock, "").await;
    let pem = std::fs::read(&cert).unwrap_or_else(|e| panic!("{e}"));
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&pem).unwrap_or_else(|e| panic!("{e}")),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    // Several requests on one pooled (keep-alive) connection, then a stream.
    for i in 0..3 {
        let r = client
            .post(b.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": format!("hello {i}")}]}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("mock reply to: hello {i}")
        );
    }
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&json!({"model": "drip", "stream": true, "messages": [{"role": "user", "content": "stream please"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!common::streamed_content(&text).is_empty(), "{text}");

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", b.addr))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn require_post_quantum_refuses_classic_only_clients() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("tls-pq-only");
    let (b, cert) = start_tls(&dir, &mock, "require_post_quantum = true").await;
    let (group, _) = handshake_and_get(
        &b,
        client_config(&cert, aws_lc_rs::default_provider().kx_groups),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(group, "X25519MLKEM768");
    let refused = handshake_and_get(&b, client_config(&cert, vec![kx_group::X25519])).await;
    assert!(
        refused.is_err(),
        "a classic-only client got through: {refused:?}"
    );
}

/// `openssl s_client` completes a handshake and verifies the chain; it negotiates the
/// hybrid where the installed OpenSSL has it (3.5+), a classic group otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn openssl_s_client_interoperates() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("tls-openssl");
    let (b, cert) = start_tls(&dir, &mock, "").await;
    let kems = Command::new("openssl")
        .args(["list", "-kem-algorithms"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_ascii_uppercase())
        .unwrap_or_default();
    let (groups, want) = if kems.contains("X25519MLKEM768") {
        ("X25519MLKEM768", "X25519MLKEM768")
    } else {
        ("X25519", "X25519")
    };
    let addr = b.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "localhost",
                "-groups",
                groups,
                "-brief",
                "-CAfile",
            ])
            .arg(&cert)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("openssl: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
    // OpenSSL 3.0-3.4 print "Server Temp Key: X25519, 253 bits"; 3.5+ print
    // "Negotiated TLS1.3 group: X25519MLKEM768".
    let group_line = text
        .lines()
        .find(|l| l.contains("Temp Key:") || l.contains("group:"))
        .unwrap_or_default();
    assert!(
        group_line.to_ascii_uppercase().contains(want),
        "wanted {want}:\n{text}"
    );
}

#[test]
fn a_bad_certificate_stops_startup_with_the_file_named() {
    let dir = TempDir::new("tls-bad");
    let cert = dir.write("cert.pem", "not a certificate\n");
    let key = dir.write("key.pem", "not a key\n");
    let cfg = dir.write(
        "bulwark.toml",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = {{ a = \"b\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("BULWARK_DATA_DIR", dir.0.join("data"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cert.pem") && err.contains("no PEM `CERTIFICATE` block"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "claimed to listen"
    );
}
