//! A minimal HTTP/1 client for the daemon's JSON API, over the admin socket (no key: the
//! daemon knows the caller from the kernel) or TCP (with an API key). No TLS: the API listens
//! on loopback or behind a proxy the operator runs.

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;

/// Where the daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `http://host:port[/prefix]`
    Tcp(String),
    /// The admin socket.
    Unix(PathBuf),
}

pub struct Client {
    target: Target,
    /// `host:port` to connect to, and the path prefix, for TCP.
    authority: String,
    prefix: String,
    timeout: Duration,
    /// Sent as `Authorization: Bearer` over TCP; never over the socket, never printed.
    key: Option<crate::config::Secret>,
}

pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    /// The server's error message, for an error reply.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.body.to_string())
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Client {
    pub fn new(
        target: Target,
        timeout: Duration,
        key: Option<crate::config::Secret>,
    ) -> anyhow::Result<Self> {
        let (authority, prefix) = match &target {
            Target::Tcp(url) => {
                let Some(rest) = url.trim_end_matches('/').strip_prefix("http://") else {
                    bail!("unsupported URL {url:?}: only http:// is supported");
                };
                let (auth, prefix) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                if auth.is_empty() {
                    bail!("invalid URL {url:?}: no host");
                }
                let has_port = match auth.rfind(']') {
                    Some(end) => auth[end..].contains(':'),
                    None => auth.contains(':'),
                };
                let auth = if has_port {
                    auth.to_string()
                } else {
                    format!("{auth}:80")
                };
                (auth, prefix.to_string())
            }
            Target::Unix(_) => ("localhost".to_string(), String::new()),
        };
        Ok(Self {
            target,
            authority,
            prefix,
            timeout,
            key,
        })
    }

    /// What to call the daemon in messages.
    pub fn url(&self, path: &str) -> String {
        match &self.target {
            Target::Tcp(base) => format!("{}{path}", base.trim_end_matches('/')),
            Target::Unix(p) => format!("unix:{}{path}", p.display()),
        }
    }

    pub fn is_socket(&self) -> bool {
        matches!(self.target, Target::Unix(_))
    }

    async fn connect(&self) -> anyhow::Result<Stream> {
        match &self.target {
            Target::Tcp(_) => {
                let s = tokio::net::TcpStream::connect(&self.authority).await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Target::Unix(p) => Ok(Stream::Unix(tokio::net::UnixStream::connect(p).await?)),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", &self.authority)
            .header("accept", "application/json");
        if let (Some(k), Target::Tcp(_)) = (&self.key, &self.target) {
            req = req.header("authorization", format!("Bearer {}", k.expose()));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .with_context(|| format!("invalid request {}", self.url(path)))?;
        let reach = || format!("cannot reach llamactld at {}", self.url(""));
        let res = match self.connect().await.with_context(reach)? {
            Stream::Tcp(s) => Self::exchange(s, req).await,
            Stream::Unix(s) => Self::exchange(s, req).await,
        }
        .with_context(reach)?;
        if res.status() == 401 && !self.is_socket() && self.key.is_none() {
            eprintln!("llamactl: hint: over TCP llamactld wants an API key: set LLAMACTL_API_KEY or --api-key-file, or use the admin socket (as root or a member of its group)");
        }
        Ok(res)
    }

    async fn exchange<S>(
        io: S,
        req: hyper::Request<Full<Bytes>>,
    ) -> anyhow::Result<hyper::Response<Incoming>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(send.send_request(req).await?)
    }

    /// A JSON request. Any HTTP status is a `Reply`; only transport failures are errors. An
    /// empty body (204) reads as JSON null.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        let url = self.url(path);
        let fut = async {
            let res = self.send(method, path, body).await?;
            let status = res.status().as_u16();
            let bytes = res
                .into_body()
                .collect()
                .await
                .context("reading the response")?
                .to_bytes();
            let body = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).with_context(|| {
                    format!("{url} answered {status} with a body that is not JSON")
                })?
            };
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .with_context(|| format!("no answer from {url} within {:?}", self.timeout))?
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request("GET", path, None).await
    }

    /// A streamed GET (log follow): calls `each` with every chunk until the server ends it.
    pub async fn stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> anyhow::Result<u16> {
        let res = tokio::time::timeout(self.timeout, self.send("GET", path, None))
            .await
            .with_context(|| {
                format!(
                    "no answer from {} within {:?}",
                    self.url(path),
                    self.timeout
                )
            })??;
        let status = res.status().as_u16();
        let mut body = res.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.context("reading the stream")?.into_data() {
                each(&data);
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_urls_become_an_authority_and_a_prefix() {
        let c = |u: &str| Client::new(Target::Tcp(u.into()), Duration::from_secs(1), None);
        let a = c("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (a.authority.as_str(), a.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let b = c("http://llm.internal/llamactl").unwrap();
        assert_eq!(
            (b.authority.as_str(), b.prefix.as_str()),
            ("llm.internal:80", "/llamactl")
        );
        let v6 = c("http://[::1]:9").unwrap();
        assert_eq!(v6.authority, "[::1]:9");
        assert!(c("https://x").is_err());
        assert!(c("http://").is_err());
        let s = Client::new(
            Target::Unix("/run/x.sock".into()),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        assert_eq!(s.url("/api/health"), "unix:/run/x.sock/api/health");
    }
}
