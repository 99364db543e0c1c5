//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (every backend cluster answered its bootstrap).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::backend::Backends;
use crate::telemetry;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub backends: Backends,
}

/// Serves admin requests until the listener fails.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            for c in &admin.backends.clusters {
                telemetry::cluster_up(&c.name, c.is_ready());
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                admin.metrics.render(),
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let clusters: Vec<_> = admin
                .backends
                .clusters
                .iter()
                .map(|c| serde_json::json!({"name": c.name, "ready": c.is_ready()}))
                .collect();
            let ready = admin.backends.all_ready();
            let body = serde_json::json!({"ready": ready, "clusters": clusters}).to_string() + "\n";
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            reply(status, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
