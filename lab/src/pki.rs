//! Certificates for tests of TLS: a CA, a server certificate for one address and a client
//! certificate, made with openssl in a directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of [`Pki::make`], all PEM.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A CA (`ca.pem`), a server certificate for `server_ip` (`server.pem`, `server.key`) and
    /// a client certificate (`client.pem`, `client.key`) in `dir`; `tag` names the CA, so two
    /// calls make CAs that do not trust each other.
    pub fn make(dir: &Path, server_ip: &str, tag: &str) -> anyhow::Result<Pki> {
        let sh = |cmd: &str| -> anyhow::Result<()> {
            let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output()?;
            anyhow::ensure!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        std::fs::create_dir_all(dir)?;
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        sh(&format!("openssl req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=nbx-test-ca-{tag}"))?;
        for (name, ext) in [("server", format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth")), ("client", "extendedKeyUsage=clientAuth".to_string())] {
            std::fs::write(dir.join(format!("{name}.ext")), format!("basicConstraints=CA:FALSE\n{ext}\n"))?;
            sh(&format!("openssl req {key} -keyout {name}.key -out {name}.csr -subj /CN=nbx-test-{name}"))?;
            sh(&format!("openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out {name}.pem -extfile {name}.ext"))?;
        }
        let f = |n: &str| dir.join(n);
        Ok(Pki { ca: f("ca.pem"), server_cert: f("server.pem"), server_key: f("server.key"), client_cert: f("client.pem"), client_key: f("client.key") })
    }
}
