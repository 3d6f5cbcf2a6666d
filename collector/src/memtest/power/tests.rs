use super::https::base64;
use super::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[test]
fn test_10_is_deselected_with_the_known_key_sequence() {
    assert_eq!(
        deselect_keys(10),
        ["f1", "f1", "f2", "1", "0", "ret", "f10", "f10"]
    );
}

#[tokio::test]
async fn qmp_speaks_the_protocol_and_reports_errors() {
    let dir = std::env::temp_dir().join(format!("kiln-qmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qmp.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            let reply = if line.contains("bogus") {
                "{\"error\": {\"class\": \"CommandNotFound\"}}\n"
            } else {
                "{\"event\": \"RESET\"}\n{\"return\": {}}\n"
            };
            write.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    });
    Power::Qmp(path.clone())
        .act("n1", Action::Reset)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(
        seen,
        [
            "{\"execute\":\"qmp_capabilities\"}",
            "{\"execute\":\"system_reset\"}"
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A one-connection-at-a-time HTTPS server with an openssl-made self-signed certificate,
/// answering `status` and recording each request it could read.
async fn tls_bmc(
    dir: &std::path::Path,
    status: &'static str,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed by .ci/setup");
    assert!(ok.success());
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("ResetType") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&got).into_owned());
            let reply =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, seen)
}

#[tokio::test]
async fn redfish_checks_certificates_and_posts_the_reset() {
    let dir = std::env::temp_dir().join(format!("kiln-redfish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, seen) = tls_bmc(&dir, "204 No Content").await;
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let power = |ca: Option<PathBuf>| Power::Redfish {
        url: format!("https://127.0.0.1:{port}"),
        system: "1".into(),
        user: "admin".into(),
        password_file: dir.join("pw"),
        ca_file: ca,
    };
    // Checking is on by default: a self-signed BMC is refused and hears nothing.
    let err = power(None)
        .act("n1", Action::Reset)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(seen.lock().unwrap().is_empty());
    // Trusting that certificate explicitly: the reset is posted with the credentials.
    power(Some(dir.join("cert.pem")))
        .act("n1", Action::Reset)
        .await
        .unwrap();
    let request = seen.lock().unwrap()[0].clone();
    assert!(
        request.starts_with("POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset HTTP/1.1"),
        "{request}"
    );
    assert!(
        request
            .to_lowercase()
            .contains("authorization: basic ywrtaw46cznjcmv0"),
        "{request}"
    );
    assert!(
        request.contains(r#"{"ResetType":"ForceRestart"}"#),
        "{request}"
    );
    // A BMC that says no is a reported failure.
    let (port, _) = tls_bmc(&dir, "401 Unauthorized").await;
    let refused = Power::Redfish {
        url: format!("https://127.0.0.1:{port}"),
        system: "1".into(),
        user: "admin".into(),
        password_file: dir.join("pw"),
        ca_file: Some(dir.join("cert.pem")),
    };
    let err = refused
        .act("n1", Action::Off)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn base64_matches_the_rfc_examples() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
        ("admin:s3cret", "YWRtaW46czNjcmV0"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

#[test]
fn redfish_needs_https() {
    let err =
        serde_yaml::from_str::<Power>("redfish: {url: http://bmc, user: a, password_file: /p}")
            .unwrap_err()
            .to_string();
    assert!(err.contains("expected https://"), "{err}");
}
