//! The REST API: repositories, the browsing API a web UI needs, and the seed API.
//!
//! Each handler authenticates, parses its arguments, and makes one call to the node that owns
//! the repository; the reply is turned into JSON as it is. Defaults and limits of paging live
//! here, so every node applies the same ones.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use wharf_placement::Member;
use wharf_proto::{
    ApiError, BlobView, CommitFilesRequest, FileAction, FileActionKind, MergeRequest, MergeStrategy, NodeReply,
    NodeRequest, NodeState, Principal, RepoName, RepoRecord, RepoRequest,
};

use crate::error::HttpError;
use crate::extract::{BodyOrQuery, JsonBody, JsonPath};
use crate::{auth, FrontState};

type Shared = Arc<FrontState>;
type ApiResult = Result<Response, HttpError>;

/// Directory entries per page unless the client asks otherwise, and at most.
const TREE_PAGE: (u64, u64) = (100, 1000);
/// Commits per page unless the client asks otherwise, and at most.
const LOG_PAGE: (u64, u64) = (30, 100);
/// Push events per page unless the client asks otherwise, and at most.
const EVENT_PAGE: (usize, usize) = (100, 1000);

/// The API's routes.
pub(crate) fn routes(state: Shared) -> Router<Shared> {
    let repo = "/api/v1/repos/{owner}/{name}";
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::serve_metrics))
        .route("/api/v1/repos", get(list_repos).post(create_repo))
        .route(repo, get(show_repo).delete(delete_repo))
        .route(&format!("{repo}/branches"), get(list_branches).post(create_branch))
        .route(&format!("{repo}/branches/{{*branch}}"), delete(delete_branch))
        .route(&format!("{repo}/tags"), get(list_tags))
        .route(&format!("{repo}/tree"), get(tree))
        .route(&format!("{repo}/blob"), get(blob))
        .route(&format!("{repo}/raw"), get(raw))
        .route(&format!("{repo}/commits"), get(log).post(commit_files))
        .route(&format!("{repo}/commits/{{sha}}"), get(show_commit))
        .route(&format!("{repo}/compare"), get(compare))
        .route(&format!("{repo}/merges"), post(merge))
        .route(&format!("{repo}/events"), get(events))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/metrics-targets", get(crate::metrics::metrics_targets))
        .route("/api/v1/cluster/nodes/{id}/drain", post(drain_node))
        .route("/api/v1/cluster/nodes/{id}/undrain", post(undrain_node))
        .route("/api/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/api/v1/repo/details", get(seed_details))
        .route("/api/v1/repo/branch", post(seed_create_branch))
        .merge(crate::ci::routes())
        .merge(crate::deploy::routes())
        .layer(DefaultBodyLimit::max(state.config.max_api_body_bytes))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

// ---- helpers ----

/// Checks that the caller may read: anyone when reads are public, else a token holder.
pub(crate) fn reader(state: &FrontState, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    if state.config.public_reads {
        auth::optional(state.directory.as_ref(), headers)
    } else {
        auth::require(state.directory.as_ref(), headers).map(Some)
    }
}

pub(crate) fn writer(state: &FrontState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    auth::require(state.directory.as_ref(), headers)
}

pub(crate) fn record_of(state: &FrontState, name: &RepoName) -> Result<RepoRecord, ApiError> {
    state.directory.repo(name).ok_or_else(|| ApiError::RepoNotFound {
        repo: name.to_string(),
    })
}

pub(crate) fn repo_name(owner: &str, name: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(&format!("{owner}/{name}"))
}

/// How long a request whose owner did not answer waits for this front's view to name a new
/// owner (a move that switched ownership as the old owner stopped), before it reports 503.
const OWNER_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends `request` to the actor of repository `name` on its owner.
pub(crate) async fn repo_call(state: &FrontState, name: &RepoName, request: RepoRequest) -> Result<NodeReply, ApiError> {
    let record = record_of(state, name)?;
    let message = NodeRequest::Repo {
        id: record.id,
        name: name.clone(),
        request,
    };
    call_owner(state, &record, &message, state.config.node_timeout).await.map(|(_, reply)| reply)
}

/// Sends `message` to the owner of `record` and returns who answered and how. If the owner
/// does not answer because the repository has just moved away from it (this front's view
/// lagged the switch), the message goes to the new owner instead of failing.
pub(crate) async fn call_owner(
    state: &FrontState,
    record: &RepoRecord,
    message: &NodeRequest,
    timeout: std::time::Duration,
) -> Result<(wharf_proto::NodeId, NodeReply), ApiError> {
    let error = match state.nodes.call_with_timeout(record.node, message, timeout).await {
        Err(error @ ApiError::Unavailable { .. }) => error,
        answered => return answered.map(|reply| (record.node, reply)),
    };
    let deadline = tokio::time::Instant::now() + OWNER_CHANGE_WAIT;
    while tokio::time::Instant::now() < deadline {
        match state.directory.repo(&record.name) {
            Some(moved) if moved.id == record.id && moved.node != record.node => {
                let reply = state.nodes.call_with_timeout(moved.node, message, timeout).await?;
                return Ok((moved.node, reply));
            }
            Some(same) if same.id == record.id => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            _ => break,
        }
    }
    Err(error)
}

/// Sends `request` to the first storage node that answers (any node can propose a change to
/// Raft); a node out of reach is skipped for the next.
pub(crate) async fn call_any_node(state: &FrontState, request: &NodeRequest) -> Result<NodeReply, ApiError> {
    let mut last_error = None;
    for node in state.directory.nodes() {
        match state.nodes.call(node.id, request).await {
            Err(error @ ApiError::Unavailable { .. }) => last_error = Some(error),
            result => return result,
        }
    }
    Err(last_error.unwrap_or_else(|| ApiError::internal("cluster", "no storage node")))
}

/// Waits until this front's copy of the records has `what` (written through another node).
pub(crate) async fn visible<T>(what: &str, mut look: impl FnMut() -> Option<T>) -> Result<T, ApiError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(found) = look() {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::internal("records", format!("{what} was written but is not visible here yet")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub(crate) fn unexpected(reply: NodeReply) -> ApiError {
    ApiError::internal("node reply", format!("unexpected reply {reply:?}"))
}

pub(crate) fn json_ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

pub(crate) fn created(value: impl serde::Serialize) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn record_json(state: &FrontState, record: &RepoRecord) -> Value {
    json!({
        "id": record.id.0,
        "name": record.name.to_string(),
        "owner": record.name.owner(),
        "repo": record.name.name(),
        "node": record.node.0,
        "created_ms": record.created_ms,
        "clone_url": format!("{}/{}.git", state.config.public_url.trim_end_matches('/'), record.name),
    })
}

/// The node a new repository goes to: the owner among active members by weighted rendezvous.
fn placement_owner(state: &FrontState, name: &RepoName) -> Result<wharf_proto::NodeId, ApiError> {
    let members: Vec<Member> = state
        .directory
        .nodes()
        .into_iter()
        .filter(|node| node.state == NodeState::Active)
        .map(|node| Member {
            id: node.id.0,
            weight: node.weight,
        })
        .collect();
    wharf_placement::owner(&members, wharf_placement::key_of(&name.to_string()))
        .map(wharf_proto::NodeId)
        .ok_or_else(|| ApiError::Unavailable {
            what: "placement".into(),
            reason: "no active storage node".into(),
            retry_after_secs: 5,
        })
}

// ---- repositories ----

async fn list_repos(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    reader(&state, &headers)?;
    let repos: Vec<Value> = state.directory.repos().iter().map(|r| record_json(&state, r)).collect();
    json_ok(json!({ "repos": repos }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRepoBody {
    name: String,
}

async fn create_repo(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<CreateRepoBody>) -> ApiResult {
    writer(&state, &headers)?;
    let name = RepoName::parse(&body.name)?;
    if state.directory.repo(&name).is_some() {
        return Err(ApiError::RepoExists { repo: name.to_string() }.into());
    }
    let node = placement_owner(&state, &name)?;
    match state.nodes.call(node, &NodeRequest::CreateRepo { name }).await? {
        NodeReply::Created(record) => created(record_json(&state, &record)),
        other => Err(unexpected(other).into()),
    }
}

async fn show_repo(State(state): State<Shared>, headers: HeaderMap, JsonPath((owner, name)): JsonPath<(String, String)>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let record = record_of(&state, &name)?;
    let summary = match repo_call(&state, &name, RepoRequest::Summary).await? {
        NodeReply::Summary(summary) => summary,
        other => return Err(unexpected(other).into()),
    };
    let mut body = record_json(&state, &record);
    body["default_branch"] = json!(summary.default_branch);
    body["size_bytes"] = json!(summary.size_bytes);
    body["branch_count"] = json!(summary.branch_count);
    body["empty"] = json!(summary.empty);
    json_ok(body)
}

async fn delete_repo(State(state): State<Shared>, headers: HeaderMap, JsonPath((owner, name)): JsonPath<(String, String)>) -> ApiResult {
    writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let record = record_of(&state, &name)?;
    state
        .nodes
        .call(record.node, &NodeRequest::DeleteRepo { id: record.id, name })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- refs ----

async fn list_branches(State(state): State<Shared>, headers: HeaderMap, JsonPath((owner, name)): JsonPath<(String, String)>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    match repo_call(&state, &name, RepoRequest::ListBranches).await? {
        NodeReply::Branches(branches) => json_ok(json!({ "branches": branches })),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBranchBody {
    name: String,
    from: Option<String>,
}

async fn create_branch(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    JsonBody(body): JsonBody<CreateBranchBody>,
) -> ApiResult {
    writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let request = RepoRequest::CreateBranch {
        name: body.name,
        from: body.from,
    };
    match repo_call(&state, &name, request).await? {
        NodeReply::Branch(branch) => created(branch),
        other => Err(unexpected(other).into()),
    }
}

async fn delete_branch(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name, branch)): JsonPath<(String, String, String)>,
) -> ApiResult {
    writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    repo_call(&state, &name, RepoRequest::DeleteBranch { name: branch }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tags(State(state): State<Shared>, headers: HeaderMap, JsonPath((owner, name)): JsonPath<(String, String)>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    match repo_call(&state, &name, RepoRequest::ListTags).await? {
        NodeReply::Tags(tags) => json_ok(json!({ "tags": tags })),
        other => Err(unexpected(other).into()),
    }
}

// ---- browsing ----

#[derive(Deserialize)]
struct TreeQuery {
    #[serde(rename = "ref")]
    rev: Option<String>,
    #[serde(default)]
    path: String,
    #[serde(default)]
    offset: u64,
    limit: Option<u64>,
}

async fn tree(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<TreeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let Query(query) = query.map_err(bad_query)?;
    let request = RepoRequest::Tree {
        rev: query.rev,
        path: query.path,
        offset: query.offset,
        limit: page_limit(query.limit, TREE_PAGE)?,
    };
    match repo_call(&state, &name, request).await? {
        NodeReply::Tree(page) => json_ok(page),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
struct BlobQuery {
    #[serde(rename = "ref")]
    rev: Option<String>,
    path: Option<String>,
}

async fn read_blob(state: &FrontState, headers: &HeaderMap, owner: &str, name: &str, query: BlobQuery) -> Result<BlobView, ApiError> {
    reader(state, headers)?;
    let name = repo_name(owner, name)?;
    let path = query.path.ok_or_else(|| ApiError::invalid("the 'path' query parameter is required"))?;
    match repo_call(state, &name, RepoRequest::Blob { rev: query.rev, path }).await? {
        NodeReply::Blob(blob) => Ok(blob),
        other => Err(unexpected(other)),
    }
}

async fn blob(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<BlobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(bad_query)?;
    let blob = read_blob(&state, &headers, &owner, &name, query).await?;
    let (encoding, content) = if blob.binary {
        ("base64", base64::engine::general_purpose::STANDARD.encode(&blob.content))
    } else {
        ("utf-8", String::from_utf8_lossy(&blob.content).into_owned())
    };
    json_ok(json!({
        "commit": blob.commit,
        "path": blob.path,
        "id": blob.id,
        "size": blob.size,
        "binary": blob.binary,
        "encoding": encoding,
        "content": content,
    }))
}

async fn raw(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<BlobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(bad_query)?;
    let blob = read_blob(&state, &headers, &owner, &name, query).await?;
    let content_type = if blob.binary { "application/octet-stream" } else { "text/plain; charset=utf-8" };
    Ok(([(header::CONTENT_TYPE, content_type)], blob.content).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(rename = "ref")]
    rev: Option<String>,
    path: Option<String>,
    limit: Option<u64>,
    cursor: Option<String>,
}

async fn log(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let Query(query) = query.map_err(bad_query)?;
    let request = RepoRequest::Log {
        rev: query.rev,
        path: query.path,
        limit: page_limit(query.limit, LOG_PAGE)?,
        cursor: query.cursor,
    };
    match repo_call(&state, &name, request).await? {
        NodeReply::Log(page) => json_ok(page),
        other => Err(unexpected(other).into()),
    }
}

async fn show_commit(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name, sha)): JsonPath<(String, String, String)>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    match repo_call(&state, &name, RepoRequest::Commit { rev: sha }).await? {
        NodeReply::Commit(detail) => json_ok(detail),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
struct CompareQuery {
    base: Option<String>,
    head: Option<String>,
}

async fn compare(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<CompareQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let Query(query) = query.map_err(bad_query)?;
    let (Some(base), Some(head)) = (query.base, query.head) else {
        return Err(ApiError::invalid("both 'base' and 'head' query parameters are required").into());
    };
    match repo_call(&state, &name, RepoRequest::Compare { base, head }).await? {
        NodeReply::Compare(view) => json_ok(view),
        other => Err(unexpected(other).into()),
    }
}

// ---- writes ----

/// One file change as the API takes it: content as text, or base64 with `"encoding":"base64"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileActionBody {
    action: FileActionKind,
    path: String,
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    executable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    branch: String,
    start_branch: Option<String>,
    expected_parent: Option<String>,
    message: String,
    author_name: Option<String>,
    author_email: Option<String>,
    actions: Vec<FileActionBody>,
}

fn file_action(body: FileActionBody) -> Result<FileAction, ApiError> {
    let content = match (body.action, body.content) {
        (FileActionKind::Delete, _) => Vec::new(),
        (_, None) => {
            return Err(ApiError::invalid(format!("the {:?} action on {:?} needs 'content'", body.action, body.path)))
        }
        (_, Some(text)) => match body.encoding.as_deref() {
            None | Some("text") | Some("utf-8") => text.into_bytes(),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| ApiError::invalid(format!("content of {:?} is not valid base64: {e}", body.path)))?,
            Some(other) => return Err(ApiError::invalid(format!("unknown encoding {other:?}: use text or base64"))),
        },
    };
    Ok(FileAction {
        action: body.action,
        path: body.path,
        content,
        executable: body.executable,
    })
}

/// Author defaults: the caller's user name, at a placeholder address.
fn author(principal: &Principal, name: Option<String>, email: Option<String>) -> (String, String) {
    (
        name.unwrap_or_else(|| principal.user.clone()),
        email.unwrap_or_else(|| format!("{}@wharf.invalid", principal.user)),
    )
}

async fn commit_files(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    JsonBody(body): JsonBody<CommitBody>,
) -> ApiResult {
    let principal = writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let actions = body.actions.into_iter().map(file_action).collect::<Result<Vec<_>, _>>()?;
    let (author_name, author_email) = author(&principal, body.author_name, body.author_email);
    let request = RepoRequest::CommitFiles(CommitFilesRequest {
        branch: body.branch,
        start_branch: body.start_branch,
        expected_parent: body.expected_parent,
        message: body.message,
        author_name,
        author_email,
        actions,
    });
    match repo_call(&state, &name, request).await? {
        NodeReply::Commit(detail) => created(detail),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    base: String,
    head: String,
    strategy: MergeStrategy,
    message: Option<String>,
    author_name: Option<String>,
    author_email: Option<String>,
}

async fn merge(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    JsonBody(body): JsonBody<MergeBody>,
) -> ApiResult {
    let principal = writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let (author_name, author_email) = author(&principal, body.author_name, body.author_email);
    let request = RepoRequest::Merge(MergeRequest {
        base: body.base,
        head: body.head,
        strategy: body.strategy,
        message: body.message,
        author_name,
        author_email,
    });
    match repo_call(&state, &name, request).await? {
        NodeReply::Merged(outcome) => json_ok(outcome),
        other => Err(unexpected(other).into()),
    }
}

// ---- push events ----

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name)): JsonPath<(String, String)>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let Query(query) = query.map_err(bad_query)?;
    let record = record_of(&state, &name)?;
    let limit = query.limit.unwrap_or(EVENT_PAGE.0).clamp(1, EVENT_PAGE.1);
    let events = state.directory.push_events(record.id, query.after, limit);
    json_ok(json!({ "events": events }))
}

// ---- the cluster ----

/// Every storage node with its state, Raft role, repositories and live figures, and the other
/// Raft members (fronts).
async fn cluster_status(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    reader(&state, &headers)?;
    let roles: std::collections::BTreeMap<u64, wharf_proto::RaftRole> =
        state.directory.raft_roles().into_iter().map(|(id, role)| (id.0, role)).collect();
    let repos = state.directory.repos();
    let mut nodes = Vec::new();
    for node in state.directory.nodes() {
        let stats = match state.nodes.call(node.id, &NodeRequest::Stats).await {
            Ok(NodeReply::Stats(stats)) => Some(stats),
            _ => None,
        };
        nodes.push(json!({
            "id": node.id.0,
            "addr": node.addr,
            "state": if stats.is_none() && node.state == NodeState::Active { json!("down") } else { json!(node.state) },
            "weight": node.weight,
            "raft_role": roles.get(&node.id.0).copied().unwrap_or(wharf_proto::RaftRole::None),
            "repos": repos.iter().filter(|r| r.node == node.id).count(),
            "actors": stats.as_ref().map(|s| s.actors),
            "sessions": stats.as_ref().map(|s| s.sessions),
            "moves": stats.as_ref().map(|s| s.moves),
            "reachable": stats.is_some(),
        }));
    }
    let storage: Vec<u64> = state.directory.nodes().iter().map(|n| n.id.0).collect();
    let others: Vec<Value> = roles
        .iter()
        .filter(|(id, _)| !storage.contains(id))
        .map(|(id, role)| json!({"id": id, "raft_role": role}))
        .collect();
    let members: Vec<Member> = state
        .directory
        .nodes()
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| Member { id: n.id.0, weight: n.weight })
        .collect();
    let misplaced = repos
        .iter()
        .filter(|r| wharf_placement::owner(&members, wharf_placement::key_of(&r.name.to_string())) != Some(r.node.0))
        .count();
    json_ok(json!({
        "nodes": nodes,
        "other_members": others,
        "misplaced": misplaced,
        "balanced": misplaced == 0,
    }))
}

async fn drain_node(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    set_node_state(&state, &headers, id, NodeState::Draining).await
}

async fn undrain_node(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    set_node_state(&state, &headers, id, NodeState::Active).await
}

/// Removes a drained node from the cluster, through any other node.
async fn remove_node(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    writer(&state, &headers)?;
    let request = NodeRequest::RemoveMember {
        node: wharf_proto::NodeId(id),
    };
    let mut last_error = None;
    for candidate in state.directory.nodes().iter().map(|n| n.id).filter(|n| n.0 != id) {
        match state.nodes.call(candidate, &request).await {
            Ok(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
            Err(error @ ApiError::Unavailable { .. }) => last_error = Some(error),
            Err(error) => return Err(error.into()),
        }
    }
    Err(last_error
        .unwrap_or_else(|| ApiError::invalid(format!("node {id} is the only node; it cannot leave")))
        .into())
}

/// Asks a reachable node (the one concerned if it answers) to record a state change.
async fn set_node_state(state: &FrontState, headers: &HeaderMap, id: u64, new_state: NodeState) -> ApiResult {
    writer(state, headers)?;
    let nodes = state.directory.nodes();
    if !nodes.iter().any(|n| n.id.0 == id) {
        return Err(ApiError::invalid(format!("node {id} is not a storage node of this cluster")).into());
    }
    let request = NodeRequest::SetNodeState {
        node: wharf_proto::NodeId(id),
        state: new_state,
    };
    let mut candidates: Vec<_> = nodes.iter().map(|n| n.id).collect();
    candidates.sort_by_key(|candidate| candidate.0 != id);
    let mut last_error = None;
    for candidate in candidates {
        match state.nodes.call(candidate, &request).await {
            Ok(_) => return json_ok(json!({"id": id, "state": new_state})),
            Err(error @ ApiError::Unavailable { .. }) => last_error = Some(error),
            Err(error) => return Err(error.into()),
        }
    }
    Err(last_error.unwrap_or_else(|| ApiError::internal("cluster", "no node")).into())
}

// ---- the seed API ----

#[derive(Deserialize)]
struct SeedDetails {
    repo_url: String,
}

async fn seed_details(State(state): State<Shared>, headers: HeaderMap, BodyOrQuery(body): BodyOrQuery<SeedDetails>) -> ApiResult {
    reader(&state, &headers)?;
    let name = RepoName::parse(&body.repo_url)?;
    match repo_call(&state, &name, RepoRequest::ListBranches).await? {
        NodeReply::Branches(branches) => json_ok(json!({
            "repo_name": name.name(),
            "owner": name.owner(),
            "branches": branches.into_iter().map(|b| b.name).collect::<Vec<_>>(),
        })),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
struct SeedBranch {
    repo_url: String,
    branch_name: String,
    from: Option<String>,
}

async fn seed_create_branch(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<SeedBranch>) -> ApiResult {
    writer(&state, &headers)?;
    let name = RepoName::parse(&body.repo_url)?;
    let request = RepoRequest::CreateBranch {
        name: body.branch_name,
        from: body.from,
    };
    match repo_call(&state, &name, request).await? {
        NodeReply::Branch(branch) => created(json!({
            "message": "Branch created successfully",
            "branch_name": branch.name,
        })),
        other => Err(unexpected(other).into()),
    }
}

pub(crate) fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> HttpError {
    HttpError(ApiError::invalid(format!("malformed query: {}", rejection.body_text())))
}

fn page_limit(asked: Option<u64>, (default, max): (u64, u64)) -> Result<u64, ApiError> {
    match asked {
        None => Ok(default),
        Some(0) => Err(ApiError::invalid("limit must be at least 1")),
        Some(n) => Ok(n.min(max)),
    }
}
