//! The receiver's Prometheus metrics (`ferry serve --metrics`, at `/metrics` beside the API,
//! without the token): sessions open, bytes received, uploads completed, refusals by the
//! protocol's error code, and the webhook's posts (waiting, delivered, attempts failed).
//! Counters are kept as requests end; the refusal's code travels to the counting middleware in
//! the response's extensions.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::protocol::ErrorCode;

type Shared = State<std::sync::Arc<AppState>>;

#[derive(Default)]
pub(crate) struct ServeMetrics {
    registry: Registry,
    received_bytes: Counter,
    completed: Counter,
    refusals: Family<Vec<(&'static str, &'static str)>, Counter>,
    sessions_open: Gauge,
    pub(crate) webhook: WebhookMetrics,
}

/// What the webhook counts (`--webhook`); shared with it (the metrics are handles).
#[derive(Clone, Default)]
pub(crate) struct WebhookMetrics {
    /// Posts kept and not delivered yet: counted again at each sweep, kept in step between.
    pub waiting: Gauge,
    pub delivered: Counter,
    pub attempts_failed: Counter,
}

impl ServeMetrics {
    pub(crate) fn new() -> ServeMetrics {
        let mut metrics = ServeMetrics::default();
        let registry = &mut metrics.registry;
        registry.register(
            "ferry_serve_received_bytes",
            "Bytes of parts received and stored",
            metrics.received_bytes.clone(),
        );
        registry.register(
            "ferry_serve_completed_uploads",
            "Uploads completed (files published)",
            metrics.completed.clone(),
        );
        registry.register(
            "ferry_serve_refusals",
            "Requests refused, by the protocol's error code",
            metrics.refusals.clone(),
        );
        registry.register(
            "ferry_serve_sessions_open",
            "Upload sessions open now",
            metrics.sessions_open.clone(),
        );
        let webhook = &metrics.webhook;
        registry.register(
            "ferry_serve_webhook_posts_waiting",
            "Webhook posts kept and not delivered yet",
            webhook.waiting.clone(),
        );
        registry.register(
            "ferry_serve_webhook_posts_delivered",
            "Webhook posts delivered",
            webhook.delivered.clone(),
        );
        registry.register(
            "ferry_serve_webhook_attempts_failed",
            "Webhook post attempts the endpoint refused or did not answer",
            webhook.attempts_failed.clone(),
        );
        metrics
    }

    pub(crate) fn received(&self, bytes: u64) {
        self.received_bytes.inc_by(bytes);
    }

    pub(crate) fn completed(&self) {
        self.completed.inc();
    }
}

/// Counts a refused request by the code its `ApiError` left in the response.
pub(crate) async fn count_refusals(State(app): Shared, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        let labels = vec![("code", code.as_str())];
        app.metrics.refusals.get_or_create(&labels).inc();
    }
    response
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(app): Shared) -> Response {
    app.metrics
        .sessions_open
        .set(app.open_sessions.count() as i64);
    let mut text = String::new();
    encode(&mut text, &app.metrics.registry).expect("writing to a String does not fail");
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
}
