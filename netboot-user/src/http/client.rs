//! One HTTP/1.1 request over an already connected stream, with hyper: the CLI's requests to the
//! agent's control socket and the bench's simulated machines fetching their scripts use it.

use http_body_util::BodyExt;

/// `GET path` with `Host: host` on `stream`; the status and the whole body.
pub async fn get<S>(stream: S, host: &str, path: &str, user_agent: &str) -> anyhow::Result<(hyper::StatusCode, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    request(stream, hyper::Method::GET, host, path, user_agent, None).await
}

/// `method path` with `Host: host` and an optional JSON or text body on `stream`; the status
/// and the whole body.
pub async fn request<S>(
    stream: S,
    method: hyper::Method,
    host: &str,
    path: &str,
    user_agent: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<(hyper::StatusCode, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", host).header("user-agent", user_agent);
    let bytes = match body {
        Some((content_type, b)) => {
            req = req.header("content-type", content_type);
            bytes::Bytes::from(b)
        }
        None => bytes::Bytes::new(),
    };
    let resp = sender.send_request(req.body(http_body_util::Full::new(bytes))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}
