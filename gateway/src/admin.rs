//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! serves), `/readyz` (which backend clusters answer), and the routes: `GET /routes`,
//! `PUT /routes` (JSON `{"routes": [...]}`) and `POST /reload` (re-read the config
//! file), and the plugins (`GET /plugins`, `POST /plugins/NAME/reload`).
//!
//! With a token configured, every request but the open metrics and health
//! ones must carry `Authorization: Bearer TOKEN`; others get 401.

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
use crate::routing::{RouteChangeError, RouteConfig, RouteControl};
use crate::telemetry;

/// Largest request body the admin endpoint reads.
const MAX_BODY: usize = 1 << 20;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub backends: Backends,
    pub routes: Arc<RouteControl>,
    pub plugins: crate::plugins::Plugins,
    /// Cluster links and mirror topics.
    pub links: Arc<crate::link::Links>,
    /// This gateway's side of the hybrid bridge.
    pub tunnel: Option<crate::tunnel::Tunnel>,
    /// The bearer token required; every request is let in when `None`.
    pub token: Option<String>,
    /// Whether metrics and health answer without the token.
    pub open_metrics: bool,
}

/// Whether `req` carries the bearer token (compared in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Equal lengths first would leak the length; HMAC both sides instead.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"causeway admin token");
    let expected = ring::hmac::sign(&key, token.as_bytes());
    ring::hmac::verify(&key, given.as_bytes(), expected.as_ref()).is_ok()
}

/// Serves admin requests until the listener fails; over TLS with `tls`.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, tls: Option<Arc<crate::tls::Listener>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let served = match tls {
                None => http1::Builder::new().serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                        Ok(Ok(stream)) => http1::Builder::new().serve_connection(TokioIo::new(stream), service).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &admin.token {
        let open = admin.open_metrics && matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz");
        if !open && !authorized(&req, token) {
            telemetry::admin_refused();
            let mut resp = reply(StatusCode::UNAUTHORIZED, "text/plain", "a bearer token is required: Authorization: Bearer TOKEN\n".into());
            resp.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/routes") => routes_reply(StatusCode::OK, &admin.routes.current()),
        (&Method::PUT, "/routes") => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Put {
                routes: Vec<RouteConfig>,
            }
            let put: Put = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return problems_reply(vec![crate::config::Problem {
                        field: "body".into(),
                        message: format!("not a JSON object {{\"routes\": [...]}}: {e}"),
                    }])
                }
            };
            change_reply(admin.routes.replace(put.routes))
        }
        (&Method::POST, "/reload") => change_reply(admin.routes.reload()),
        (&Method::GET, "/tunnel") => match &admin.tunnel {
            Some(t) => reply(StatusCode::OK, "application/json", format!("{}\n", t.status())),
            None => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                format!("{}\n", serde_json::json!({"problems": [{"field": "tunnel", "message": "this gateway has no [tunnel] section"}]})),
            ),
        },
        (&Method::GET, "/plugins") => {
            let list: Vec<_> = admin
                .plugins
                .list()
                .into_iter()
                .map(|(name, kind, path)| serde_json::json!({"name": name, "kind": kind, "path": path}))
                .collect();
            reply(StatusCode::OK, "application/json", serde_json::json!({ "plugins": list }).to_string() + "\n")
        }
        (&Method::POST, path) if path.starts_with("/plugins/") && path.ends_with("/reload") => {
            let name = path.trim_start_matches("/plugins/").trim_end_matches("/reload").trim_end_matches('/');
            let results = admin.plugins.reload(if name.is_empty() { None } else { Some(name) });
            if results.is_empty() {
                return reply(StatusCode::NOT_FOUND, "application/json", format!("{}\n", serde_json::json!({"problems": [{"field": "plugin", "message": format!("no plugin named '{name}'")}]})));
            }
            let failed = results.iter().any(|(_, r)| r.is_err());
            let body: Vec<_> = results
                .iter()
                .map(|(n, r)| match r {
                    Ok(()) => serde_json::json!({"name": n, "reloaded": true}),
                    Err(e) => serde_json::json!({"name": n, "reloaded": false, "error": e}),
                })
                .collect();
            let status = if failed { StatusCode::BAD_REQUEST } else { StatusCode::OK };
            reply(status, "application/json", serde_json::json!({ "plugins": body }).to_string() + "\n")
        }
        (_, path) if path == "/links" || path.starts_with("/links/") || path == "/mirrors" || path.starts_with("/mirrors/") => {
            links(admin, req).await
        }
        (_, "/routes") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET or PUT\n".into()),
        (_, "/reload") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n".into()),
        (m, _) if m != Method::GET && m != Method::HEAD => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into())
        }
        _ => inspect(admin, req.uri().path()),
    }
}

/// The link and mirror API: JSON in, JSON out (see docs/linking.md).
async fn links(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::link::{LinkError, LinkOptions, LinkSpec, Op};

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewLink {
        name: String,
        source: String,
        destination: String,
        #[serde(default)]
        config: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewMirror {
        topic: String,
        link: String,
        #[serde(default)]
        name: Option<String>,
    }

    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let links = &admin.links;
    let outcome: Result<(StatusCode, serde_json::Value), LinkError> = match (&method, parts.as_slice()) {
        (&Method::GET, ["links"]) => Ok((StatusCode::OK, links.list_links().await)),
        (&Method::POST, ["links"]) => match read_body(req).await {
            Err(r) => return r,
            Ok(body) => match serde_json::from_slice::<NewLink>(&body) {
                Err(e) => Err(LinkError::Invalid(format!(
                    "not a JSON object {{\"name\", \"source\", \"destination\", \"config\": {{...}}}}: {e}"
                ))),
                Ok(new) => {
                    let mut options = LinkOptions::default();
                    match new.config.iter().try_for_each(|(k, v)| options.set(k, v)) {
                        Err(e) => Err(LinkError::Invalid(e)),
                        Ok(()) => links
                            .create_link(LinkSpec { name: new.name, source: new.source, destination: new.destination, options })
                            .await
                            .map(|v| (StatusCode::CREATED, v)),
                    }
                }
            },
        },
        (&Method::GET, ["links", name]) => links.describe_link(name).await.map(|v| (StatusCode::OK, v)),
        (&Method::DELETE, ["links", name]) => links.delete_link(name).await.map(|v| (StatusCode::OK, v)),
        (&Method::GET, ["mirrors"]) => {
            let link = query.split('&').find_map(|kv| kv.strip_prefix("link="));
            Ok((StatusCode::OK, links.list_mirrors(link).await))
        }
        (&Method::POST, ["mirrors"]) => match read_body(req).await {
            Err(r) => return r,
            Ok(body) => match serde_json::from_slice::<NewMirror>(&body) {
                Err(e) => Err(LinkError::Invalid(format!("not a JSON object {{\"topic\", \"link\", \"name\"}}: {e}"))),
                Ok(new) => links
                    .create_mirror(&new.topic, &new.link, new.name.as_deref())
                    .await
                    .map(|v| (StatusCode::CREATED, v)),
            },
        },
        (&Method::GET, ["mirrors", name]) => links.describe_mirror(name).await.map(|v| (StatusCode::OK, v)),
        (&Method::POST, ["mirrors", name, op]) => match Op::parse(op) {
            Some(op) => {
                #[derive(serde::Deserialize, Default)]
                #[serde(deny_unknown_fields)]
                struct Options {
                    #[serde(default)]
                    switch_route: bool,
                }
                let (name, op) = (name.to_string(), op);
                match read_body(req).await {
                    Err(r) => return r,
                    Ok(body) if body.iter().all(u8::is_ascii_whitespace) => links.operate(&name, op, false).await.map(|v| (StatusCode::OK, v)),
                    Ok(body) => match serde_json::from_slice::<Options>(&body) {
                        Err(e) => Err(LinkError::Invalid(format!("not a JSON object {{\"switch_route\": true|false}}: {e}"))),
                        Ok(o) => links.operate(&name, op, o.switch_route).await.map(|v| (StatusCode::OK, v)),
                    },
                }
            }
            None => Err(LinkError::NotFound(format!("no mirror operation '{op}' (pause, resume, promote, failover)"))),
        },
        _ => Err(LinkError::NotFound(format!(
            "no {method} {path}: see GET/POST /links, GET/DELETE /links/NAME, GET/POST /mirrors, GET /mirrors/NAME, POST /mirrors/NAME/pause|resume|promote|failover"
        ))),
    };
    match outcome {
        Ok((status, body)) => reply(status, "application/json", body.to_string() + "\n"),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            reply(status, "application/json", serde_json::json!({"error": e.to_string()}).to_string() + "\n")
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            format!("cannot read the body (at most {MAX_BODY} bytes): {e}\n"),
        )),
    }
}

fn routes_reply(status: StatusCode, routes: &[RouteConfig]) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "routes": routes }).to_string() + "\n";
    reply(status, "application/json", body)
}

fn problems_reply(problems: Vec<crate::config::Problem>) -> Response<Full<Bytes>> {
    let list: Vec<_> = problems
        .iter()
        .map(|p| serde_json::json!({"field": p.field, "message": p.message}))
        .collect();
    let body = serde_json::json!({ "problems": list }).to_string() + "\n";
    reply(StatusCode::BAD_REQUEST, "application/json", body)
}

fn change_reply(outcome: Result<Vec<RouteConfig>, RouteChangeError>) -> Response<Full<Bytes>> {
    match outcome {
        Ok(routes) => routes_reply(StatusCode::OK, &routes),
        Err(RouteChangeError::Invalid(problems)) => problems_reply(problems),
        Err(RouteChangeError::NoConfigFile) => reply(
            StatusCode::CONFLICT,
            "application/json",
            serde_json::json!({"problems": [{"field": "config", "message": "started without --config; there is no file to re-read"}]}).to_string() + "\n",
        ),
    }
}

fn inspect(admin: &Admin, path: &str) -> Response<Full<Bytes>> {
    match path {
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
            // Ready while any cluster answers: the others' topics get retriable
            // errors, and taking the whole gateway out would cut the healthy ones too.
            let up = admin.backends.clusters.iter().filter(|c| c.is_ready()).count();
            let ready = up > 0;
            let degraded = up < admin.backends.clusters.len();
            let body = serde_json::json!({"ready": ready, "degraded": degraded, "clusters": clusters}).to_string() + "\n";
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            reply(status, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz, /readyz or /routes\n".into()),
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
