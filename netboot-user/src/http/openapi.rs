//! The OpenAPI 3.1 description of the HTTP service, served at `/api/v1/openapi.json`, derived
//! rather than written: every route is registered here, once, from a handler annotated with
//! `#[utoipa::path]` (its path, parameters, bodies and answers), and the request and response
//! types derive `ToSchema` from the same structs that are serialized; the scope each operation
//! needs over `http.listen` (`x-scope`, `security`) is asked of [`Scope::needed`], which the
//! token check uses. `tests::the_document_and_the_router_agree` walks both.

use super::auth::Scope;
use super::state::HttpState;
use super::{api, read, script};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, OnceLock};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "netboot-xdp",
        description = "Provisioning and observation of a netboot-xdp boot server. Over http.listen a bearer token of \
                       scope read < write < admin is needed ([api] tokens_file; reads are public with public_read \
                       or without a tokens file); the control socket needs none. Each operation names its scope \
                       in x-scope."
    )
)]
struct Doc;

/// Every route the HTTP service answers (the fallback, files under `http.root`, aside), each
/// with its description.
pub fn routes() -> OpenApiRouter<Arc<HttpState>> {
    OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(script::boot_script))
        .routes(routes!(read::metrics))
        .routes(routes!(read::status))
        .routes(routes!(read::leases))
        .routes(routes!(read::leases6))
        .routes(routes!(read::nodes))
        .routes(routes!(read::node))
        .routes(routes!(api::list_hosts))
        .routes(routes!(api::import_hosts))
        .routes(routes!(api::get_host, api::put_host, api::patch_host, api::delete_host))
        .routes(routes!(api::put_intent))
        .routes(routes!(api::post_event, api::get_events))
        .routes(routes!(api::explain))
        .routes(routes!(api::discovered))
        .routes(routes!(api::audit))
        .routes(routes!(openapi_json))
}

/// The document, made once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = routes().into_openapi();
        // After the routes: a modifier of the derive would run before they are added.
        utoipa::Modify::modify(&Scopes, &mut doc);
        doc
    })
}

/// This description.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, body = OpenApiDocument)))]
pub(crate) async fn openapi_json() -> Response {
    axum::Json(document()).into_response()
}

/// The live dashboard: one page, no build step, no CDN; it reads the API.
#[utoipa::path(get, path = "/", responses((status = 200, content_type = "text/html", body = String)))]
pub(crate) async fn dashboard() -> Response {
    const PAGE: &str = include_str!("dashboard.html");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// An OpenAPI 3.1 document, as the answer of `/api/v1/openapi.json`.
pub(crate) struct OpenApiDocument;

impl utoipa::PartialSchema for OpenApiDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::schema::AdditionalProperties;
        // Its parts are the OpenAPI specification's to describe (the description's link).
        let object = || ObjectBuilder::new().schema_type(Type::Object).additional_properties(Some(AdditionalProperties::<utoipa::openapi::schema::Schema>::FreeForm(true)));
        object()
            .property("openapi", ObjectBuilder::new().schema_type(Type::String).pattern(Some("^3\\.1\\.")))
            .property("info", object())
            .property("paths", object())
            .property("components", object())
            .required("openapi")
            .required("info")
            .required("paths")
            .description(Some("https://spec.openapis.org/oas/3.1/schema/2022-10-07"))
            .into()
    }
}

impl utoipa::ToSchema for OpenApiDocument {}

/// Gives each operation the scope [`Scope::needed`] says (as `x-scope`) and the security that
/// goes with it: reads may go without a token (`public_read`, or no tokens file), the rest not.
struct Scopes;

impl utoipa::Modify for Scopes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let bearer = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", bearer);
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::PATCH, &mut item.patch),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let scope = Scope::needed(&method, path);
                let name = scope.map_or("none", Scope::name);
                op.extensions.get_or_insert_with(Default::default).insert("x-scope".into(), name.into());
                let token = SecurityRequirement::new("bearer", Vec::<String>::new());
                op.security = Some(match scope {
                    None => vec![SecurityRequirement::default()],
                    Some(Scope::Read) => vec![SecurityRequirement::default(), token],
                    Some(_) => vec![token],
                });
                if scope.is_some() {
                    use utoipa::openapi::ResponseBuilder;
                    op.responses.responses.entry("401".into()).or_insert_with(|| ResponseBuilder::new().description("no valid token").build().into());
                    op.responses.responses.entry("403".into()).or_insert_with(|| ResponseBuilder::new().description("the token's scope is too small").build().into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::document;
    use axum::http::{Method, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt;
    use utoipa::openapi::{RefOr, schema::Schema};

    const METHODS: [Method; 5] = [Method::GET, Method::PUT, Method::POST, Method::PATCH, Method::DELETE];

    /// The operations of the document: (path, method).
    fn operations() -> Vec<(String, Method)> {
        let mut v = Vec::new();
        for (path, item) in &document().paths.paths {
            let ops = [(Method::GET, &item.get), (Method::PUT, &item.put), (Method::POST, &item.post), (Method::PATCH, &item.patch), (Method::DELETE, &item.delete)];
            v.extend(ops.into_iter().filter(|(_, op)| op.is_some()).map(|(m, _)| (path.clone(), m)));
        }
        v
    }

    /// Every operation of the document is answered by its handler, and every other method of a
    /// documented path is refused (405): the router has exactly the document's operations. And
    /// no route is registered anywhere but through [`super::routes`].
    #[tokio::test]
    async fn the_document_and_the_router_agree() {
        let dir = crate::scratch::ScratchDir::new("openapi");
        let text = format!("[server]\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.0.0.0/24\"\n[http]\nroot = \"{}\"\n", dir.join("state").display(), dir.display());
        let cfg = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let agent = crate::runtime::AgentRecord { pid: 1, iface: "nbxoapi0".into(), xdp_mode: "skb".into(), config: "t.toml".into(), state_dir: dir.join("state") };
        let timelines = Arc::new(crate::timeline::Timelines::new("nbxoapi0"));
        let state = crate::http::HttpState::new(&cfg, "10.0.0.1".parse().unwrap(), agent, Arc::default(), timelines).unwrap();
        let app = crate::http::router(Arc::new(state));
        let ops = operations();
        assert!(ops.len() >= 20, "{} operations", ops.len());
        for (path, method) in &ops {
            let uri = path.replace("{mac}", "52:54:00:ff:ff:fe");
            let req = axum::http::Request::builder().method(method.clone()).uri(&uri).body(axum::body::Body::from("{}")).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            let fallback = String::from_utf8_lossy(&body).contains("no such API route") || (!path.starts_with("/api/") && status == StatusCode::NOT_FOUND);
            assert!(status != StatusCode::METHOD_NOT_ALLOWED && !fallback, "{method} {path} is documented but not routed: {status}");
        }
        for (path, _) in &ops {
            for method in METHODS.iter().filter(|m| !ops.contains(&(path.clone(), (*m).clone()))) {
                let uri = path.replace("{mac}", "52:54:00:ff:ff:fe");
                let req = axum::http::Request::builder().method(method.clone()).uri(&uri).body(axum::body::Body::empty()).unwrap();
                let status = app.clone().oneshot(req).await.unwrap().status();
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is routed but not documented");
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for file in ["http/mod.rs", "http/api.rs", "http/read.rs", "http/script.rs", "http/state.rs", "http/files.rs", "http/grub.rs", "agent/mod.rs"] {
            let text = std::fs::read_to_string(src.join(file)).unwrap();
            assert!(!text.contains(".route(") && !text.contains("Router::new()"), "{file} registers a route outside http::openapi::routes");
        }
    }

    /// Every JSON answer is a named schema (or a list of one), and no schema of the document is
    /// an object without properties.
    #[test]
    fn every_answer_is_a_named_schema() {
        let doc = document();
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.put, &item.post, &item.patch, &item.delete].into_iter().flatten() {
                for (code, resp) in &op.responses.responses {
                    let RefOr::T(resp) = resp else { continue };
                    let Some(json) = resp.content.get("application/json") else { continue };
                    let named = match &json.schema {
                        Some(RefOr::Ref(_)) => true,
                        Some(RefOr::T(Schema::Array(a))) => matches!(&a.items, utoipa::openapi::schema::ArrayItems::RefOrSchema(s) if matches!(**s, RefOr::Ref(_))),
                        _ => false,
                    };
                    assert!(named, "{path} {code}: the answer is not a named schema");
                }
            }
        }
        let schemas = &doc.components.as_ref().unwrap().schemas;
        for name in ["Host", "Lease", "Lease6", "Node", "TimelineEvent", "Status", "ClusterStatus", "Explain", "Discovered", "AuditEntry", "NodeEvent", "MacAddr", "OpenApiDocument"] {
            assert!(schemas.contains_key(name), "no schema {name}: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        let audit = doc.paths.paths["/api/v1/audit"].get.as_ref().unwrap();
        assert_eq!(audit.extensions.as_ref().unwrap().get("x-scope"), Some(&serde_json::json!("admin")));
        assert!(audit.responses.responses.contains_key("403"));
        for (name, s) in schemas {
            if let RefOr::T(Schema::Object(o)) = s
                && o.schema_type == utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::schema::Type::Object)
            {
                assert!(!o.properties.is_empty() || o.additional_properties.is_some(), "{name} is a bare object");
            }
        }
    }
}
