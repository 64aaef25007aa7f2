//! The agent's control socket (`/run/netboot-xdp/IFACE.sock`, root's only): the agent serves
//! its HTTP routes there ([`crate::http`]) and the CLI asks it through them, whatever
//! `http.listen` is.

use crate::runtime::{control_path, dir};

/// Binds the control socket of `iface` (a stale one from a killed agent is replaced), only
/// root may connect.
pub fn bind_control(iface: &str) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = control_path(iface);
    std::fs::create_dir_all(dir())?;
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// `GET path` on the control socket of the agent on `iface`; the body of a 200 answer.
pub fn control_get(iface: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    control_request(iface, hyper::Method::GET, path, None)
}

/// A request to the agent of `iface` over its control socket (root's, no token needed); the
/// body of a 2xx answer, the agent's message otherwise.
pub fn control_request(iface: &str, method: hyper::Method, path: &str, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<Vec<u8>> {
    let sock = control_path(iface);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::UnixStream::connect(&sock))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within 5 s", sock.display()))?
            .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", sock.display()))?;
        let exchange = crate::http::client::request(stream, method, "localhost", path, "netboot-xdp", body);
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("agent on {iface}: no answer to {path} within 30 s"))??;
        if !status.is_success() {
            anyhow::bail!("agent on {iface}: {path}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(body)
    })
}
