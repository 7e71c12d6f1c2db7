//! A minimal HTTP/1 client for the daemon's JSON API (no TLS: the API listens on loopback or
//! behind a proxy the operator runs).

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub struct Client {
    base: String,
    timeout: Duration,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
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

impl Client {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            bail!("unsupported URL {base:?}: only http:// is supported");
        }
        Ok(Self {
            base,
            timeout,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let url = self.url(path);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .with_context(|| format!("invalid URL {url}"))?;
        self.http
            .request(req)
            .await
            .with_context(|| format!("cannot reach llamactld at {}", self.base))
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
