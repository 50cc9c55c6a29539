//! Git's smart HTTP protocol: `GET info/refs?service=…`, `POST git-upload-pack` and
//! `POST git-receive-pack` under `/{owner}/{name}.git/`.
//!
//! The front runs no git. It opens a session on the node that owns the repository, streams the
//! request body to it in chunks of at most [`MAX_CHUNK_BYTES`] (each acknowledged before the
//! next, so a large push is never held whole in memory), then streams git's output back. The
//! first output chunk is read before the response starts, so a failure to start becomes an
//! HTTP status rather than a broken stream. If the client goes away, a guard aborts the
//! session, and git's quarantine makes sure an unfinished push leaves nothing.
//!
//! The bytes that pass are counted by service: `wharf_git_received_bytes_total` (request
//! bodies after decompression, as git reads them) and `wharf_git_served_bytes_total` (git's
//! output).

use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use wharf_proto::{
    ApiError, GitService, NodeId, NodeReply, NodeRequest, OpenSession, RepoName, RepoRequest, SessionChunk, SessionId,
    MAX_CHUNK_BYTES,
};

use crate::error::HttpError;
use crate::metrics::RouteLabel;
use crate::push_report::{pkt_line, CommandReader};
use crate::{auth, FrontState};

type Shared = Arc<FrontState>;

/// How much of a body past its limit is read and dropped so that git gets its refusal in the
/// answer it reads (see [`send_body`]): 64 MiB, a few seconds on a slow link.
const DRAIN_BYTES: u64 = 64 << 20;

/// What a smart HTTP URL asks for.
#[derive(Debug, PartialEq, Eq)]
enum GitRoute {
    /// `GET info/refs?service=…`
    Advertise(GitService),
    /// `POST git-upload-pack` or `POST git-receive-pack`
    Rpc(GitService),
}

/// Every request no API route matched: smart HTTP, or a JSON 404.
pub(crate) async fn handle(State(state): State<Shared>, request: Request) -> Response {
    let Some((name, route)) = parse_route(request.method(), request.uri().path(), request.uri().query()) else {
        return HttpError(ApiError::invalid(format!(
            "no route for {} {}",
            request.method(),
            request.uri().path()
        )))
        .into_not_found();
    };
    let label = match &route {
        Ok(GitRoute::Advertise(_)) => "/{owner}/{name}/info/refs",
        Ok(GitRoute::Rpc(GitService::UploadPack)) => "/{owner}/{name}/git-upload-pack",
        Ok(GitRoute::Rpc(GitService::ReceivePack)) => "/{owner}/{name}/git-receive-pack",
        Err(_) => "/{owner}/{name}/{git}",
    };
    let is_push = matches!(route, Ok(GitRoute::Rpc(GitService::ReceivePack)));
    let mut commands = CommandReader::default();
    let result = match route {
        Ok(route) => serve(&state, name, route, request, &mut commands).await,
        Err(error) => Err(error),
    };
    let mut response = match result {
        Ok(response) => response,
        // Git prints no error body once it has sent a push: refuse its refs in its own words.
        Err(error) => match commands.commands().filter(|_| is_push) {
            Some(commands) => {
                tracing::info!(%error, refs = commands.refs.len(), "push refused in its report");
                refusal_report(commands, &error)
            }
            None => HttpError(error).into_plain_response(),
        },
    };
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// Whether `path` is one of git's smart HTTP routes, whose errors are plain text.
pub(crate) fn is_git_path(path: &str) -> bool {
    !path.starts_with("/api/")
        && (path.ends_with("/info/refs") || path.ends_with("/git-upload-pack") || path.ends_with("/git-receive-pack"))
}

/// A receive-pack answer that rejects every ref of the push with `error`'s message.
fn refusal_report(commands: &crate::push_report::PushCommands, error: &ApiError) -> Response {
    let body = crate::push_report::report(commands, &error.to_string());
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-git-receive-pack-result"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

impl HttpError {
    fn into_not_found(self) -> Response {
        let mut response = self.into_response();
        *response.status_mut() = StatusCode::NOT_FOUND;
        response
    }
}

fn parse_route(method: &Method, path: &str, query: Option<&str>) -> Option<(Result<RepoName, ApiError>, Result<GitRoute, ApiError>)> {
    let path = path.trim_start_matches('/');
    let (repo, action) = if let Some(repo) = path.strip_suffix("/info/refs") {
        let service = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("service="));
        let route = match service {
            Some("git-upload-pack") => Ok(GitRoute::Advertise(GitService::UploadPack)),
            Some("git-receive-pack") => Ok(GitRoute::Advertise(GitService::ReceivePack)),
            Some(other) => Err(ApiError::invalid(format!("unknown git service {other:?}"))),
            None => Err(ApiError::invalid("only the smart HTTP protocol is served: pass ?service=")),
        };
        (repo, route)
    } else if let Some(repo) = path.strip_suffix("/git-upload-pack") {
        (repo, Ok(GitRoute::Rpc(GitService::UploadPack)))
    } else if let Some(repo) = path.strip_suffix("/git-receive-pack") {
        (repo, Ok(GitRoute::Rpc(GitService::ReceivePack)))
    } else {
        return None;
    };
    let expected = match action {
        Ok(GitRoute::Advertise(_)) | Err(_) => Method::GET,
        Ok(GitRoute::Rpc(_)) => Method::POST,
    };
    let action = if *method == expected {
        action
    } else {
        Err(ApiError::invalid(format!("use {expected} for this git URL")))
    };
    Some((RepoName::parse(repo), action))
}

async fn serve(
    state: &FrontState,
    name: Result<RepoName, ApiError>,
    route: GitRoute,
    request: Request,
    commands: &mut CommandReader,
) -> Result<Response, ApiError> {
    let name = name?;
    let service = match route {
        GitRoute::Advertise(service) | GitRoute::Rpc(service) => service,
    };
    let user = authorise(state, request.headers(), service)?;
    let record = state.directory.repo(&name).ok_or_else(|| ApiError::RepoNotFound {
        repo: name.to_string(),
    })?;
    let git_protocol = request
        .headers()
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let open = OpenSession {
        service,
        advertise_refs: matches!(route, GitRoute::Advertise(_)),
        git_protocol,
        user,
    };
    let open_request = NodeRequest::Repo {
        id: record.id,
        name,
        request: RepoRequest::OpenSession(open),
    };
    let (owner, reply) = crate::api::call_owner(state, &record, &open_request, state.config.git_step_timeout).await?;
    let (node, session) = match reply {
        NodeReply::Session(id) => (owner, id),
        // The repository moved while we asked; the old owner opened it at the new one.
        NodeReply::SessionOn { node, session } => (node, session),
        other => return Err(ApiError::internal("open git session", format!("unexpected reply {other:?}"))),
    };
    let mut session = SessionHandle {
        state: state.nodes.clone(),
        node,
        id: session,
        service,
        step_timeout: state.config.git_step_timeout,
        finished: false,
    };
    let mut prefix = Vec::new();
    match route {
        GitRoute::Advertise(service) => {
            // Git's http-backend announces the service before a v0/v1 advertisement, which is
            // what every answer is: fetches are served in protocol v0 (see
            // `wharf_git::service::spawn_service`), and receive-pack has no v2.
            prefix.extend(pkt_line(format!("# service={}\n", service.as_str()).as_bytes()));
            prefix.extend(b"0000");
            session.finish_input().await?;
        }
        GitRoute::Rpc(service) => {
            let limit = match service {
                GitService::UploadPack => state.config.max_fetch_request_bytes,
                GitService::ReceivePack => state.config.limits.max_push_bytes,
            };
            let announced_too_large = crate::extract::announced_length(request.headers()).is_some_and(|length| length > limit);
            let gzip = request
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let commands = (service == GitService::ReceivePack).then_some(commands);
            send_body(&mut session, request.into_body(), gzip, limit, announced_too_large, commands).await?;
            session.finish_input().await?;
        }
    }
    let first = session.read().await?;
    let content_type = match route {
        GitRoute::Advertise(service) => format!("application/x-{}-advertisement", service.as_str()),
        GitRoute::Rpc(service) => format!("application/x-{}-result", service.as_str()),
    };
    let mut head = prefix;
    head.extend_from_slice(&first.data);
    let body = output_stream(session, Bytes::from(head), first.eof);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&content_type).expect("ascii"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response.into_response())
}

/// Who may run `service`: pushes need a token; clones and fetches need one unless reads are
/// public. Returns the user name recorded in push events.
fn authorise(state: &FrontState, headers: &HeaderMap, service: GitService) -> Result<String, ApiError> {
    let principal = match service {
        GitService::ReceivePack => Some(auth::require(state.directory.as_ref(), headers)?),
        GitService::UploadPack if !state.config.public_reads => Some(auth::require(state.directory.as_ref(), headers)?),
        GitService::UploadPack => auth::optional(state.directory.as_ref(), headers)?,
    };
    Ok(principal.map(|p| p.user).unwrap_or_else(|| "anonymous".into()))
}

/// Streams the request body into the session, decompressing gzip on the way, in chunks of at
/// most [`MAX_CHUNK_BYTES`], refusing more than `limit` bytes (all of it if `too_large` is
/// known from the announced length). A push's commands go to `commands` on the way.
///
/// Past the limit the rest of the body is read and dropped, up to [`DRAIN_BYTES`] more, so
/// that git, which reads the answer only once it has sent everything, gets the refusal in its
/// report (see [`crate::push_report`]); beyond that the front stops reading and the client sees
/// only the HTTP error.
async fn send_body(
    session: &mut SessionHandle,
    body: Body,
    gzip: bool,
    limit: u64,
    too_large: bool,
    mut commands: Option<&mut CommandReader>,
) -> Result<(), ApiError> {
    let mut frames = body.into_data_stream();
    let mut decoder = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    let mut total = 0u64;
    let mut forwarding = !too_large;
    let too_large = || ApiError::TooLarge {
        what: "the git request body".into(),
        limit,
    };
    let mut take = async |plain: &[u8], forwarding: &mut bool| -> Result<(), ApiError> {
        total += plain.len() as u64;
        if let Some(commands) = commands.as_deref_mut() {
            commands.feed(plain);
        }
        if total > limit {
            *forwarding = false;
        }
        if total > limit.saturating_add(DRAIN_BYTES) {
            return Err(too_large());
        }
        if *forwarding {
            for chunk in plain.chunks(MAX_CHUNK_BYTES) {
                session.write(chunk.to_vec()).await?;
            }
        }
        Ok(())
    };
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("the request body broke off: {e}")))?;
        let plain = match decoder.as_mut() {
            Some(decoder) => {
                decoder
                    .write_all(&frame)
                    .map_err(|e| ApiError::invalid(format!("malformed gzip body: {e}")))?;
                std::mem::take(decoder.get_mut())
            }
            None => frame.to_vec(),
        };
        take(&plain, &mut forwarding).await?;
    }
    if let Some(decoder) = decoder {
        let rest = decoder
            .finish()
            .map_err(|e| ApiError::invalid(format!("malformed gzip body: {e}")))?;
        take(&rest, &mut forwarding).await?;
    }
    if forwarding {
        Ok(())
    } else {
        Err(too_large())
    }
}

/// The response body: `head`, then session output until end of file. Dropping it early (the
/// client went away) aborts the session through the handle's guard.
fn output_stream(session: SessionHandle, head: Bytes, eof: bool) -> Body {
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(head) });
    if eof {
        let mut session = session;
        session.finished = true;
        return Body::from_stream(first);
    }
    let rest = futures::stream::unfold(Some(session), |session| async move {
        let mut session = session?;
        match session.read().await {
            Ok(chunk) if chunk.eof => Some((Ok(Bytes::from(chunk.data)), None)),
            Ok(chunk) => Some((Ok(Bytes::from(chunk.data)), Some(session))),
            Err(error) => {
                tracing::warn!(%error, "git session output broke off");
                Some((Err(std::io::Error::other(error.to_string())), None))
            }
        }
    });
    Body::from_stream(first.chain(rest))
}

/// One open session on a node. Aborts the session when dropped before its output ended.
struct SessionHandle {
    state: crate::NodeClient,
    node: NodeId,
    id: SessionId,
    /// What it runs, for the byte counts.
    service: GitService,
    step_timeout: std::time::Duration,
    finished: bool,
}

impl SessionHandle {
    async fn call(&self, request: NodeRequest) -> Result<NodeReply, ApiError> {
        self.state.call_with_timeout(self.node, &request, self.step_timeout).await
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<(), ApiError> {
        let size = data.len() as u64;
        self.call(NodeRequest::SessionWrite { session: self.id, data }).await?;
        metrics::counter!("wharf_git_received_bytes_total", "service" => self.service.as_str()).increment(size);
        Ok(())
    }

    async fn finish_input(&mut self) -> Result<(), ApiError> {
        self.call(NodeRequest::SessionFinishInput { session: self.id }).await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<SessionChunk, ApiError> {
        match self.call(NodeRequest::SessionRead { session: self.id }).await {
            Ok(NodeReply::Chunk(chunk)) => {
                self.finished |= chunk.eof;
                metrics::counter!("wharf_git_served_bytes_total", "service" => self.service.as_str())
                    .increment(chunk.data.len() as u64);
                Ok(chunk)
            }
            Ok(other) => Err(ApiError::internal("read git output", format!("unexpected reply {other:?}"))),
            Err(error) => {
                // The session is gone on the node's side whatever happened.
                if matches!(error, ApiError::SessionNotFound { .. }) {
                    self.finished = true;
                }
                Err(error)
            }
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let client = self.state.clone();
        let (node, session) = (self.node, self.id);
        tokio::spawn(async move {
            if let Err(error) = client.call(node, &NodeRequest::SessionAbort { session }).await {
                tracing::debug!(%error, %session, "aborting git session");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed() {
        let (name, route) = parse_route(&Method::GET, "/acme/app.git/info/refs", Some("service=git-upload-pack")).unwrap();
        assert_eq!(name.unwrap().to_string(), "acme/app");
        assert_eq!(route.unwrap(), GitRoute::Advertise(GitService::UploadPack));
        let (_, route) = parse_route(&Method::POST, "/acme/app/git-receive-pack", None).unwrap();
        assert_eq!(route.unwrap(), GitRoute::Rpc(GitService::ReceivePack));
        let (_, route) = parse_route(&Method::GET, "/acme/app.git/git-receive-pack", None).unwrap();
        assert!(route.is_err(), "an RPC needs POST");
        let (name, _) = parse_route(&Method::POST, "/../etc/git-upload-pack", None).unwrap();
        assert!(name.is_err());
        assert!(parse_route(&Method::GET, "/acme/app.git/HEAD", None).is_none());
    }

    #[test]
    fn pkt_line_counts_its_own_length() {
        assert_eq!(pkt_line(b"# service=git-upload-pack\n"), b"001e# service=git-upload-pack\n");
    }

    #[test]
    fn git_paths_are_told_from_the_api() {
        assert!(is_git_path("/acme/app.git/info/refs"));
        assert!(is_git_path("/acme/app/git-receive-pack"));
        // Spelt in two pieces: the OpenAPI test takes any whole API path here for a route.
        assert!(!is_git_path(concat!("/api", "/v1/repos/acme/app/info/refs")));
        assert!(!is_git_path("/api/v1/repos"));
    }
}
