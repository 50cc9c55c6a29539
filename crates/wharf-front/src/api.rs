//! The REST API: repositories, the browsing API a web UI needs, and the seed API.
//!
//! Each handler authenticates, parses its arguments, and makes one call to the node that owns
//! the repository; the reply is turned into JSON as it is. Defaults and limits of paging live
//! here, so every node applies the same ones.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_placement::Member;
use wharf_proto::{
    ApiError, BlobView, BranchView, CommitDetail, CommitFilesRequest, CompareView, FileAction, FileActionKind, LogPage,
    MergeOutcome, MergeRequest, MergeStrategy, NodeReply, NodeRequest, NodeState, Principal, PushEvent, RaftRole, RepoName,
    RepoRecord, RepoRequest, RepoSummary, TagView, TreePage,
};

use crate::error::HttpError;
use crate::extract::{BodyOrQuery, JsonBody, JsonPath, LargeJsonBody};
use crate::openapi::{tags, IdPath};
use crate::{auth, FrontState};

type Shared = Arc<FrontState>;
type ApiResult = Result<Response, HttpError>;

/// Directory entries per page unless the client asks otherwise, and at most.
const TREE_PAGE: (u64, u64) = (100, 1000);
/// Commits per page unless the client asks otherwise, and at most.
const LOG_PAGE: (u64, u64) = (30, 100);
/// Push events per page unless the client asks otherwise, and at most.
const EVENT_PAGE: (usize, usize) = (100, 1000);

/// The API's routes. Every route under `/api/v1` is registered through `routes!`, so it
/// cannot exist without its entry in the OpenAPI document (a test in `openapi` checks that no
/// `/api/v1` route is registered any other way). The body limit is the caller's to add.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::serve_metrics))
        .routes(routes!(list_repos, create_repo))
        .routes(routes!(show_repo, delete_repo))
        .routes(routes!(list_branches, create_branch))
        .routes(routes!(delete_branch))
        .routes(routes!(list_tags))
        .routes(routes!(tree))
        .routes(routes!(blob))
        .routes(routes!(raw))
        .routes(routes!(log, commit_files))
        .routes(routes!(show_commit))
        .routes(routes!(compare))
        .routes(routes!(merge))
        .routes(routes!(events))
        .routes(routes!(cluster_status))
        .routes(routes!(crate::metrics::metrics_targets))
        .routes(routes!(drain_node))
        .routes(routes!(undrain_node))
        .routes(routes!(remove_node))
        .routes(routes!(seed_details))
        .routes(routes!(seed_create_branch))
        .routes(routes!(crate::openapi::openapi_json))
        .merge(crate::ci::routes())
        .merge(crate::deploy::routes())
}

/// The path of a repository's routes: `/api/v1/repos/{owner}/{name}/...`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RepoPath {
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub name: String,
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

/// Sends a write (a branch created or deleted, a commit, a merge) made by `principal` to the
/// actor of repository `name`: the refs it changes are recorded under the principal's name.
pub(crate) async fn repo_write(state: &FrontState, name: &RepoName, principal: &Principal, request: RepoRequest) -> Result<NodeReply, ApiError> {
    let request = RepoRequest::AsUser {
        user: principal.user.clone(),
        request: Box::new(request),
    };
    repo_call(state, name, request).await
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

/// A repository as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct RepoView {
    /// Its id.
    id: u64,
    /// `owner/name`.
    name: String,
    /// The owner part of its name.
    owner: String,
    /// The name part of its name.
    repo: String,
    /// The node that owns it.
    node: u64,
    /// Creation time, milliseconds since the Unix epoch.
    created_ms: u64,
    /// The URL to clone it with.
    clone_url: String,
}

fn record_json(state: &FrontState, record: &RepoRecord) -> RepoView {
    RepoView {
        id: record.id.0,
        name: record.name.to_string(),
        owner: record.name.owner().to_owned(),
        repo: record.name.name().to_owned(),
        node: record.node.0,
        created_ms: record.created_ms,
        clone_url: format!("{}/{}.git", state.config.public_url.trim_end_matches('/'), record.name),
    }
}

/// A repository with its summary.
#[derive(Serialize, ToSchema)]
struct RepoDetail {
    #[serde(flatten)]
    repo: RepoView,
    #[serde(flatten)]
    summary: RepoSummary,
}

/// Every repository.
#[derive(Serialize, ToSchema)]
struct RepoList {
    repos: Vec<RepoView>,
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

#[utoipa::path(get, path = "/api/v1/repos", tag = tags::REPOS, responses((status = 200, description = "Every repository", body = RepoList)))]
async fn list_repos(State(state): State<Shared>, headers: HeaderMap) -> ApiResult {
    reader(&state, &headers)?;
    let repos = state.directory.repos().iter().map(|r| record_json(&state, r)).collect();
    json_ok(RepoList { repos })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRepoBody {
    /// `owner/name`.
    name: String,
}

#[utoipa::path(post, path = "/api/v1/repos", tag = tags::REPOS, request_body = CreateRepoBody, responses((status = 201, description = "Created, on the node placement chose", body = RepoView)))]
async fn create_repo(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<CreateRepoBody>) -> ApiResult {
    writer(&state, &headers)?;
    let name = RepoName::parse(&body.name)?;
    if state.directory.repo(&name).is_some() {
        return Err(ApiError::RepoExists { repo: name.to_string() }.into());
    }
    let node = placement_owner(&state, &name)?;
    match state.nodes.call(node, &NodeRequest::CreateRepo { name }).await? {
        NodeReply::Created(record) => {
            // Read your writes: the record was committed through the owner, and this front's
            // copy may be a replication round behind; a client's next call (an environment for
            // the repository, say) must find it here.
            visible("the repository", || state.directory.repo(&record.name).filter(|r| r.id == record.id)).await?;
            created(record_json(&state, &record))
        }
        other => Err(unexpected(other).into()),
    }
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}", tag = tags::REPOS, params(RepoPath), responses((status = 200, description = "The repository and its summary", body = RepoDetail)))]
async fn show_repo(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let record = record_of(&state, &name)?;
    let summary = match repo_call(&state, &name, RepoRequest::Summary).await? {
        NodeReply::Summary(summary) => summary,
        other => return Err(unexpected(other).into()),
    };
    json_ok(RepoDetail {
        repo: record_json(&state, &record),
        summary,
    })
}

#[utoipa::path(delete, path = "/api/v1/repos/{owner}/{name}", tag = tags::REPOS, params(RepoPath), responses((status = 204, description = "Deleted")))]
async fn delete_repo(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
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

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/branches", tag = tags::REPOS, params(RepoPath), responses((status = 200, description = "The branches", body = BranchList)))]
async fn list_branches(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    match repo_call(&state, &name, RepoRequest::ListBranches).await? {
        NodeReply::Branches(branches) => json_ok(BranchList { branches }),
        other => Err(unexpected(other).into()),
    }
}

/// A repository's branches.
#[derive(Serialize, ToSchema)]
struct BranchList {
    branches: Vec<BranchView>,
}

/// A repository's tags.
#[derive(Serialize, ToSchema)]
struct TagList {
    tags: Vec<TagView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBranchBody {
    /// The new branch's short name.
    name: String,
    /// The branch, tag or commit it starts at; default: the default branch.
    from: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/repos/{owner}/{name}/branches", tag = tags::REPOS, params(RepoPath), request_body = CreateBranchBody, responses((status = 201, description = "Created", body = BranchView)))]
async fn create_branch(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    JsonBody(body): JsonBody<CreateBranchBody>,
) -> ApiResult {
    let principal = writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let request = RepoRequest::CreateBranch {
        name: body.name,
        from: body.from,
    };
    match repo_write(&state, &name, &principal, request).await? {
        NodeReply::Branch(branch) => created(branch),
        other => Err(unexpected(other).into()),
    }
}

#[utoipa::path(delete, path = "/api/v1/repos/{owner}/{name}/branches/{*branch}", tag = tags::REPOS, params(RepoPath, ("branch" = String, Path, description = "The branch's short name; it may hold slashes")), responses((status = 204, description = "Deleted")))]
async fn delete_branch(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name, branch)): JsonPath<(String, String, String)>,
) -> ApiResult {
    let principal = writer(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    repo_write(&state, &name, &principal, RepoRequest::DeleteBranch { name: branch }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/tags", tag = tags::REPOS, params(RepoPath), responses((status = 200, description = "The tags", body = TagList)))]
async fn list_tags(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    match repo_call(&state, &name, RepoRequest::ListTags).await? {
        NodeReply::Tags(tags) => json_ok(TagList { tags }),
        other => Err(unexpected(other).into()),
    }
}

// ---- browsing ----

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TreeQuery {
    /// The branch, tag or commit to read; default: the default branch.
    #[serde(rename = "ref")]
    rev: Option<String>,
    /// The directory; default: the root.
    #[serde(default)]
    path: String,
    /// Entries to skip.
    #[serde(default)]
    offset: u64,
    /// Entries per page (default 100, at most 1000).
    limit: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/tree", tag = tags::BROWSE, params(RepoPath, TreeQuery), responses((status = 200, description = "A page of a directory listing", body = TreePage)))]
async fn tree(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BlobQuery {
    /// The branch, tag or commit to read; default: the default branch.
    #[serde(rename = "ref")]
    rev: Option<String>,
    /// The file's path (required).
    path: Option<String>,
}

/// A file's content: UTF-8 text, or base64 for binary files.
#[derive(Serialize, ToSchema)]
struct BlobJson {
    /// The commit it was read at.
    commit: String,
    /// Its path.
    path: String,
    /// Its object id.
    id: String,
    /// Its size in bytes.
    size: u64,
    /// Whether the content looks binary.
    binary: bool,
    /// `utf-8` or `base64`.
    encoding: String,
    /// The content in that encoding.
    content: String,
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

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/blob", tag = tags::BROWSE, params(RepoPath, BlobQuery), responses((status = 200, description = "A file and its content", body = BlobJson)))]
async fn blob(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    query: Result<Query<BlobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(bad_query)?;
    let blob = read_blob(&state, &headers, &owner, &name, query).await?;
    let (encoding, content) = if blob.binary {
        ("base64", base64::engine::general_purpose::STANDARD.encode(&blob.content))
    } else {
        ("utf-8", String::from_utf8_lossy(&blob.content).into_owned())
    };
    json_ok(BlobJson {
        commit: blob.commit,
        path: blob.path,
        id: blob.id,
        size: blob.size,
        binary: blob.binary,
        encoding: encoding.to_owned(),
        content,
    })
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/raw", tag = tags::BROWSE, params(RepoPath, BlobQuery), responses((status = 200, description = "A file's bytes: text/plain for text, application/octet-stream for binary files", content_type = "application/octet-stream", body = Vec<u8>)))]
async fn raw(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    query: Result<Query<BlobQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(bad_query)?;
    let blob = read_blob(&state, &headers, &owner, &name, query).await?;
    let content_type = if blob.binary { "application/octet-stream" } else { "text/plain; charset=utf-8" };
    Ok(([(header::CONTENT_TYPE, content_type)], blob.content).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// The branch, tag or commit to start at; default: the default branch.
    #[serde(rename = "ref")]
    rev: Option<String>,
    /// Only commits that change this path.
    path: Option<String>,
    /// Commits per page (default 30, at most 100).
    limit: Option<u64>,
    /// The `next_cursor` of the page before.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/commits", tag = tags::BROWSE, params(RepoPath, LogQuery), responses((status = 200, description = "A page of history, newest first", body = LogPage)))]
async fn log(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
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

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/commits/{sha}", tag = tags::BROWSE, params(RepoPath, ("sha" = String, Path, description = "A commit id, branch or tag")), responses((status = 200, description = "The commit and its diff statistics", body = CommitDetail)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CompareQuery {
    /// The branch, tag or commit compared against (required).
    base: Option<String>,
    /// The branch, tag or commit compared (required).
    head: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/compare", tag = tags::BROWSE, params(RepoPath, CompareQuery), responses((status = 200, description = "Commits on head not on base, and the diff", body = CompareView)))]
async fn compare(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
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
#[derive(Deserialize, ToSchema)]
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

/// A commit of file changes to a branch.
#[derive(Deserialize, ToSchema)]
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

#[utoipa::path(post, path = "/api/v1/repos/{owner}/{name}/commits", tag = tags::REPOS, params(RepoPath), request_body = CommitBody, responses((status = 201, description = "The new commit", body = CommitDetail)))]
async fn commit_files(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    LargeJsonBody(body): LargeJsonBody<CommitBody>,
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
    match repo_write(&state, &name, &principal, request).await? {
        NodeReply::Commit(detail) => created(detail),
        other => Err(unexpected(other).into()),
    }
}

/// A merge of `head` into the branch `base`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    base: String,
    head: String,
    strategy: MergeStrategy,
    message: Option<String>,
    author_name: Option<String>,
    author_email: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/repos/{owner}/{name}/merges", tag = tags::REPOS, params(RepoPath), request_body = MergeBody, responses((status = 200, description = "What the merge did", body = MergeOutcome)))]
async fn merge(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
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
    match repo_write(&state, &name, &principal, request).await? {
        NodeReply::Merged(outcome) => json_ok(outcome),
        other => Err(unexpected(other).into()),
    }
}

// ---- push events ----

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    after: u64,
    /// Events per page (default 100, at most 1000).
    limit: Option<usize>,
}

/// A repository's push events, oldest first.
#[derive(Serialize, ToSchema)]
struct EventList {
    events: Vec<PushEvent>,
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/events", tag = tags::REPOS, params(RepoPath, EventsQuery), responses((status = 200, description = "Push events, oldest first", body = EventList)))]
async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let name = repo_name(&owner, &name)?;
    let Query(query) = query.map_err(bad_query)?;
    let record = record_of(&state, &name)?;
    let limit = query.limit.unwrap_or(EVENT_PAGE.0).clamp(1, EVENT_PAGE.1);
    let events = state.directory.push_events(record.id, query.after, limit);
    json_ok(EventList { events })
}

// ---- the cluster ----

/// Every storage node with its state, Raft role, repositories and live figures, and the other
/// Raft members (fronts).
#[utoipa::path(get, path = "/api/v1/cluster", tag = tags::CLUSTER, responses((status = 200, description = "Every node, its state and figures, and the balance", body = ClusterStatus)))]
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
        nodes.push(ClusterNode {
            id: node.id.0,
            addr: node.addr.clone(),
            state: if stats.is_none() && node.state == NodeState::Active { NodeState::Down } else { node.state },
            weight: node.weight,
            raft_role: roles.get(&node.id.0).copied().unwrap_or(RaftRole::None),
            repos: repos.iter().filter(|r| r.node == node.id).count(),
            actors: stats.as_ref().map(|s| s.actors),
            sessions: stats.as_ref().map(|s| s.sessions),
            moves: stats.as_ref().map(|s| s.moves),
            sandbox: stats.as_ref().map(|s| s.sandbox.clone()),
            reachable: stats.is_some(),
        });
    }
    let storage: Vec<u64> = state.directory.nodes().iter().map(|n| n.id.0).collect();
    let others = roles
        .iter()
        .filter(|(id, _)| !storage.contains(id))
        .map(|(id, role)| OtherMember { id: *id, raft_role: *role })
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
    json_ok(ClusterStatus {
        nodes,
        other_members: others,
        misplaced,
        balanced: misplaced == 0,
    })
}

/// The cluster as the front sees it.
#[derive(Serialize, ToSchema)]
struct ClusterStatus {
    /// Every storage node.
    nodes: Vec<ClusterNode>,
    /// Raft members that are not storage nodes (fronts).
    other_members: Vec<OtherMember>,
    /// Repositories not on the node placement wants them on.
    misplaced: usize,
    /// Whether no repository is misplaced.
    balanced: bool,
}

/// A storage node with its live figures (`null` when it does not answer).
#[derive(Serialize, ToSchema)]
struct ClusterNode {
    id: u64,
    /// Its cluster address.
    addr: String,
    /// Its state; `down` for an active node that does not answer.
    state: NodeState,
    weight: u32,
    raft_role: RaftRole,
    /// Repositories it owns.
    repos: usize,
    /// Repository actors active now.
    actors: Option<u64>,
    /// Git sessions open now.
    sessions: Option<u64>,
    /// Repositories it has moved away since it started.
    moves: Option<u64>,
    /// What confines the node's CI jobs and deployed instances (`bubblewrap, as user 65534`),
    /// or `unavailable: …` when the node cannot confine them and so runs none; absent if the
    /// node did not answer.
    sandbox: Option<String>,
    /// Whether it answered.
    reachable: bool,
}

/// A Raft member that is not a storage node.
#[derive(Serialize, ToSchema)]
struct OtherMember {
    id: u64,
    raft_role: RaftRole,
}

/// A node's new state.
#[derive(Serialize, ToSchema)]
struct NodeStateChange {
    id: u64,
    state: NodeState,
}

#[utoipa::path(post, path = "/api/v1/cluster/nodes/{id}/drain", tag = tags::CLUSTER, params(IdPath), responses((status = 200, description = "The node is draining", body = NodeStateChange)))]
async fn drain_node(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    set_node_state(&state, &headers, id, NodeState::Draining).await
}

#[utoipa::path(post, path = "/api/v1/cluster/nodes/{id}/undrain", tag = tags::CLUSTER, params(IdPath), responses((status = 200, description = "The node is active again", body = NodeStateChange)))]
async fn undrain_node(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    set_node_state(&state, &headers, id, NodeState::Active).await
}

/// Removes a drained node from the cluster, through any other node.
#[utoipa::path(delete, path = "/api/v1/cluster/nodes/{id}", tag = tags::CLUSTER, params(IdPath), responses((status = 204, description = "Removed from the cluster")))]
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
            Ok(_) => return json_ok(NodeStateChange { id, state: new_state }),
            Err(error @ ApiError::Unavailable { .. }) => last_error = Some(error),
            Err(error) => return Err(error.into()),
        }
    }
    Err(last_error.unwrap_or_else(|| ApiError::internal("cluster", "no node")).into())
}

// ---- the seed API ----

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SeedDetails {
    /// The repository: `owner/name` or its clone URL.
    repo_url: String,
}

/// A repository's branches, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct SeedRepoDetails {
    repo_name: String,
    owner: String,
    branches: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/repo/details", tag = tags::SEED, description = "The arguments come as query parameters, or as the same fields in a JSON body.", params(SeedDetails), responses((status = 200, description = "The repository's branches", body = SeedRepoDetails)))]
async fn seed_details(State(state): State<Shared>, headers: HeaderMap, BodyOrQuery(body): BodyOrQuery<SeedDetails>) -> ApiResult {
    reader(&state, &headers)?;
    let name = RepoName::parse(&body.repo_url)?;
    match repo_call(&state, &name, RepoRequest::ListBranches).await? {
        NodeReply::Branches(branches) => json_ok(SeedRepoDetails {
            repo_name: name.name().to_owned(),
            owner: name.owner().to_owned(),
            branches: branches.into_iter().map(|b| b.name).collect(),
        }),
        other => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize, ToSchema)]
struct SeedBranch {
    /// The repository: `owner/name` or its clone URL.
    repo_url: String,
    /// The new branch's name.
    branch_name: String,
    /// Where it starts; default: the default branch.
    from: Option<String>,
}

/// A created branch, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct SeedBranchCreated {
    message: String,
    branch_name: String,
}

#[utoipa::path(post, path = "/api/v1/repo/branch", tag = tags::SEED, request_body = SeedBranch, responses((status = 201, description = "Created", body = SeedBranchCreated)))]
async fn seed_create_branch(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<SeedBranch>) -> ApiResult {
    let principal = writer(&state, &headers)?;
    let name = RepoName::parse(&body.repo_url)?;
    let request = RepoRequest::CreateBranch {
        name: body.branch_name,
        from: body.from,
    };
    match repo_write(&state, &name, &principal, request).await? {
        NodeReply::Branch(branch) => created(SeedBranchCreated {
            message: "Branch created successfully".into(),
            branch_name: branch.name,
        }),
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
