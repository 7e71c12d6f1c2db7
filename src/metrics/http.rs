//! Series about the HTTP server's connections: how many are open, and how many were refused or
//! closed by a limit (`[server] max_connections`, `header_timeout`) — the numbers that show a
//! connection flood or a slowloris attack, which request metrics never see.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `max_connections` (refused at accept with 503) or `header_timeout` (no complete request
    /// head in time, idle keep-alive connections included)
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Open connections, TCP and admin socket.
    pub open: Gauge,
    pub refused: Counter,
    pub header_timeouts: Counter,
}

impl HttpMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let closed = Family::<ClosedLabels, Counter>::default();
        // Both series exist from the first scrape (at 0): an alert on their rate has data.
        let refused = closed
            .get_or_create(&ClosedLabels {
                reason: "max_connections",
            })
            .clone();
        let header_timeouts = closed
            .get_or_create(&ClosedLabels {
                reason: "header_timeout",
            })
            .clone();
        let m = Self {
            open: Gauge::default(),
            refused,
            header_timeouts,
        };
        r.register(
            "http_connections",
            "HTTP connections open (TCP and the admin socket)",
            m.open.clone(),
        );
        r.register(
            "http_connections_closed_by_limit",
            "HTTP connections refused or closed by a limit, by reason (max_connections: refused with 503 at accept; header_timeout: no complete request head in [server] header_timeout)",
            closed,
        );
        m
    }
}
