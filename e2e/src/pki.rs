//! A certificate authority the rig does not trust: what a client is given when the test wants a
//! server's certificate to fail verification although the client has a CA file.

use std::process::Command;
use std::sync::OnceLock;

/// The PEM of a self-signed CA made with `openssl` once per test process; nothing the rig
/// serves chains to it.
pub fn foreign_ca_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mp-foreign-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let (key, cert) = (dir.join("ca.key"), dir.join("ca.crt"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=not the rig's CA"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs (a package the rig installs)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read_to_string(&cert).expect("the certificate");
        let _ = std::fs::remove_dir_all(&dir);
        pem
    })
}
