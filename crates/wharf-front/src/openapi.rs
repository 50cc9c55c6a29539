//! The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`.
//!
//! It is generated from the handlers with utoipa: every route under `/api/v1` is registered
//! through utoipa-axum's `routes!`, which takes the path, the method, the parameters and the
//! request and reply bodies from the handler's `#[utoipa::path]` attribute, so a route cannot be
//! served without its entry. The schemas come from `ToSchema` on the wire types of
//! `wharf-proto` and on the front's own request and reply types. Error replies, which every
//! handler shares through [`crate::error::HttpError`], are added here to every operation.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi};
use wharf_proto::ApiError;

use crate::error::{ErrorBody, HttpError};

/// The tags that group the operations.
pub(crate) mod tags {
    /// Repositories, refs and writes.
    pub const REPOS: &str = "repositories";
    /// Reading trees, files, history and diffs.
    pub const BROWSE: &str = "browsing";
    /// Pipelines, jobs, logs, artifacts and CI variables.
    pub const CI: &str = "ci";
    /// Environments and deployments.
    pub const DEPLOY: &str = "deployments";
    /// Nodes of the cluster.
    pub const CLUSTER: &str = "cluster";
    /// The seed API's calls (`repo_url`, `test_id`, `env_id` arguments).
    pub const SEED: &str = "seed";
    /// This document.
    pub const META: &str = "meta";
}

/// A numeric id in the path (`/api/v1/jobs/{id}`, ...). It only describes the parameter:
/// the handlers take it as `JsonPath<u64>`, or in a tuple with the path's other parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IdPath {
    /// The id of the pipeline, job or node the path names.
    #[allow(dead_code)] // read by the document, never by a handler
    pub id: u64,
}

/// An environment's or a deployment's id in the path: `env-3` or `deploy-7`, or the bare
/// number. It only describes the parameter: the handlers take it as `JsonPath<String>` and
/// read it with [`wharf_proto::deploy::IdKind::parse`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DeployIdPath {
    /// The environment (`env-3`) or deployment (`deploy-7`) the path names; its number works too.
    #[allow(dead_code)] // read by the document, never by a handler
    pub id: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wharf API",
        description = "The REST API of a Wharf front: repositories, browsing, CI, deployments and the cluster. \
Every error reply is `{\"error\":{\"code\",\"message\"}}` with the status its code calls for. \
Reads work without a token when the front allows public reads; writes need `Authorization: Bearer TOKEN` \
(or Basic with the token as password). \
Not described here, because they are not REST calls: Git smart HTTP (`/{owner}/{name}.git/...`), \
the application router (`/apps/...`, `/preview/...` and `Host: env.name.owner.localhost`), `/healthz` and `/metrics`."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "repositories", description = "Repositories, refs and writes"),
        (name = "browsing", description = "Trees, files, history and diffs"),
        (name = "ci", description = "Pipelines, jobs, logs, artifacts and CI variables"),
        (name = "deployments", description = "Environments and deployments"),
        (name = "cluster", description = "Nodes of the cluster"),
        (name = "seed", description = "The seed API"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The error replies every operation may give, by status: the response's name in the
/// document's components and its description.
const ERRORS: [(&str, &str, &str); 7] = [
    ("400", "BadRequest", "Malformed or invalid arguments, names or body"),
    ("401", "Unauthorized", "A token is needed (writes; reads when reads are not public) or the token is unknown"),
    ("404", "NotFound", "What the path or the arguments name does not exist (or is hidden from the caller)"),
    ("409", "Conflict", "The change conflicts with the current state (exists already, stale parent, merge conflict)"),
    ("413", "TooLarge", "The request body is over the limit"),
    ("500", "Internal", "An unexpected failure of the front or a node"),
    ("503", "Unavailable", "A node or the metadata leader is away for a moment; retry after `Retry-After` seconds"),
];

/// The OpenAPI document of every REST route the front serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, routes) = crate::api::routes().split_for_parts();
    complete(routes)
}

/// Adds to the paths the routes registered: the info, the error replies of every operation,
/// and the token schemes.
fn complete(routes: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(routes);
    // axum's catch-all parameter `{*path}` is an ordinary `{path}` template in OpenAPI.
    let paths = std::mem::take(&mut document.paths.paths);
    for (path, mut item) in paths {
        let is_document = path == "/api/v1/openapi.json";
        for (method, operation) in operations(&mut item) {
            if !is_document {
                add_errors(operation, method);
            }
        }
        document.paths.paths.insert(path.replace("{*", "{"), item);
    }
    let components = document.components.get_or_insert_with(Default::default);
    for (_, name, description) in ERRORS {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        let response = ResponseBuilder::new().description(description).content("application/json", content).build();
        components.responses.insert(name.to_owned(), RefOr::T(response));
    }
    components.add_security_scheme("token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    components.add_security_scheme("basic", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()));
    // No requirement, or either scheme: which calls need a token depends on the front's setting.
    document.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new("token", Vec::<String>::new()),
        SecurityRequirement::new("basic", Vec::<String>::new()),
    ]);
    document
}

/// The operations of a path, by lowercase method name.
fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    let candidates = [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("patch", &mut item.patch),
    ];
    candidates
        .into_iter()
        .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
        .collect()
}

/// Adds the error replies an operation can give: 409 only for changes, 413 only where a body
/// is read.
fn add_errors(operation: &mut Operation, method: &str) {
    let changes = method != "get";
    let reads_body = operation.request_body.is_some();
    for (status, name, _) in ERRORS {
        let applies = match status {
            "409" => changes,
            "413" => reads_body,
            _ => true,
        };
        if applies {
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
    }
}

/// The document as JSON, made once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| serde_json::to_string(&document()).map_err(|error| error.to_string()));

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = tags::META,
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Result<Response, HttpError> {
    match &*DOCUMENT {
        Ok(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()),
        Err(error) => Err(ApiError::internal("the OpenAPI document", error.clone()).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const PREFIX: &str = "/api/v1";

    fn json() -> serde_json::Value {
        serde_json::from_str(&serde_json::to_string(&document()).expect("serialises")).expect("parses")
    }

    #[test]
    fn the_document_is_openapi_3_1_with_errors_and_replies_for_every_operation() {
        let document = json();
        let version = document["openapi"].as_str().expect("an openapi field");
        assert!(version.starts_with("3.1"), "version {version}");
        let paths = document["paths"].as_object().expect("paths");
        assert!(paths.len() > 40, "{} paths", paths.len());
        for (path, item) in paths {
            assert!(path.starts_with(PREFIX), "{path} is not an API path");
            assert!(!path.contains("{*"), "{path} keeps axum's catch-all syntax");
            for (method, operation) in item.as_object().expect("a path item") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} has no success reply");
                if path != "/api/v1/openapi.json" {
                    for status in ["400", "401", "500", "503"] {
                        assert!(responses.contains_key(status), "{method} {path} lacks its {status} reply");
                    }
                }
                for parameter in path.split('{').skip(1).filter_map(|p| p.split('}').next()) {
                    let declared = operation["parameters"]
                        .as_array()
                        .is_some_and(|all| all.iter().any(|p| p["name"] == parameter && p["in"] == "path"));
                    assert!(declared, "{method} {path} does not declare its path parameter {parameter}");
                }
            }
        }
        let error = &document["components"]["schemas"]["ErrorBody"];
        assert_eq!(error["properties"]["error"]["$ref"], "#/components/schemas/ErrorDetail", "{error}");
    }

    /// Every string literal in the front's sources that names an API path, and every path
    /// given to a plain axum registration (`.route(...)` and its kin).
    fn scan_sources() -> (BTreeSet<String>, Vec<String>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut literals = BTreeSet::new();
        let mut plain = Vec::new();
        let quoted = format!("\"{PREFIX}/");
        for entry in std::fs::read_dir(&dir).expect("the front's sources") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("a source file");
            for (at, _) in source.match_indices(&quoted) {
                let literal = &source[at + 1..];
                let end = literal.find('"').expect("a closed literal");
                literals.insert(literal[..end].replace("{*", "{"));
            }
            for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                for (at, _) in source.match_indices(call) {
                    // Not a call: a mention in a comment, or this scan's own pattern.
                    let line = &source[source[..at].rfind('\n').map_or(0, |start| start + 1)..at];
                    if line.trim_start().starts_with("//") || source[..at].ends_with('"') {
                        continue;
                    }
                    let argument = source[at + call.len()..].trim_start();
                    let argument = &argument[..argument.find(',').unwrap_or(argument.len())];
                    plain.push(format!("{}: {argument}", path.display()));
                }
            }
        }
        (literals, plain)
    }

    #[test]
    fn every_api_route_is_registered_with_its_documentation() {
        let document = json();
        let documented: BTreeSet<String> = document["paths"].as_object().expect("paths").keys().cloned().collect();
        let (literals, plain) = scan_sources();
        // A route added with `.route(...)` would be served without an entry: only the routes
        // that are not REST API may be registered that way, and only with a literal path.
        for registration in &plain {
            let (_, argument) = registration.split_once(": ").expect("file: argument");
            assert!(
                argument.starts_with('"') && !argument.starts_with(&format!("\"{PREFIX}")),
                "{registration}: an API route must be registered through routes! with #[utoipa::path]"
            );
        }
        // Every API path written in the sources is in the document, and nothing else is.
        let missing: Vec<_> = literals.difference(&documented).collect();
        assert!(missing.is_empty(), "API paths in the sources but not in the document: {missing:?}");
        let extra: Vec<_> = documented.difference(&literals).collect();
        assert!(extra.is_empty(), "paths in the document that no source names: {extra:?}");
    }
}
