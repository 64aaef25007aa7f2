//! One HTTP/1.1 GET over an already connected stream, with hyper: the CLI's requests to the
//! agent's control socket and the bench's simulated machines fetching their scripts use it.

use http_body_util::BodyExt;

/// `GET path` with `Host: host` on `stream`; the status and the whole body.
pub async fn get<S>(stream: S, host: &str, path: &str, user_agent: &str) -> anyhow::Result<(hyper::StatusCode, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .header("user-agent", user_agent)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}
