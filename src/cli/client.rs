//! A minimal HTTP/1 client for the daemon's JSON API (no TLS: the API listens on loopback or
//! behind a proxy the operator runs).

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub struct Client {
    base: String,
    timeout: Duration,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
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

    /// GET a JSON endpoint. Any HTTP status is a `Reply`; only transport failures are errors.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        let url = self.url(path);
        let uri: hyper::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
        let fut = async {
            let res = self
                .http
                .get(uri)
                .await
                .with_context(|| format!("cannot reach llamactld at {}", self.base))?;
            let status = res.status().as_u16();
            let bytes = res
                .into_body()
                .collect()
                .await
                .context("reading the response")?
                .to_bytes();
            let body = serde_json::from_slice(&bytes)
                .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .with_context(|| format!("no answer from {url} within {:?}", self.timeout))?
    }
}
