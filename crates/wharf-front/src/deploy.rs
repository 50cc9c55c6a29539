//! Environments and deployments over HTTP (the seed's API and the rest), and the application
//! router: `/apps/{owner}/{name}/{env}/...` goes to a healthy instance of the environment, by
//! the weights in the records; `/preview/{owner}/{name}/{env}/...` to the newest revision's
//! healthy instances whatever their weight (a blue-green set before promotion).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_proto::deploy::{
    IdKind,
    DeploymentKind, DeploymentRecord, DeploymentStatus, EnvConfig, EnvironmentRecord, InstanceHealth, InstanceRecord,
    InstanceTraffic,
};
use wharf_proto::{ApiError, DeployAction, NodeId, NodeReply, NodeRequest, RepoName, RepoRecord, RepoRequest};

use crate::api::{created, json_ok, reader, repo_call, unexpected, writer};
use crate::error::HttpError;
use crate::extract::{BodyOrQuery, JsonBody, JsonPath};
use crate::openapi::{tags, DeployIdPath};
use crate::FrontState;

type Shared = Arc<FrontState>;
type ApiResult = Result<Response, HttpError>;

/// The most bytes of a request body the application router passes on.
const MAX_APP_BODY: usize = 32 << 20;

/// The routes of this module. The application router (`/apps`, `/preview`) is not part of the
/// REST API: it passes requests on to deployed applications, so it has no OpenAPI entry.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment, delete_environment))
        .routes(routes!(show_environment, update_environment))
        .routes(routes!(history))
        .routes(routes!(rollback))
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(deployment_status))
        .routes(routes!(show_deployment))
        .routes(routes!(promote))
        .routes(routes!(deployment_events))
        .routes(routes!(instance_log))
        .route("/apps/{owner}/{name}/{env}", any(app))
        .route("/apps/{owner}/{name}/{env}/", any(app))
        .route("/apps/{owner}/{name}/{env}/{*rest}", any(app))
        .route("/preview/{owner}/{name}/{env}", any(preview))
        .route("/preview/{owner}/{name}/{env}/", any(preview))
        .route("/preview/{owner}/{name}/{env}/{*rest}", any(preview))
}

/// The application router's shared parts: an HTTP client and a counter that spreads requests
/// over instances by weight.
pub(crate) struct Apps {
    client: reqwest::Client,
    turn: AtomicU64,
    /// What this router has seen of each instance, for canary checks.
    traffic: std::sync::Mutex<std::collections::HashMap<u64, InstanceTraffic>>,
}

impl Apps {
    /// Counts one request passed to `instance` of environment `env`: for canary checks, and in
    /// `wharf_router_requests_total`, `wharf_router_errors_total` (no answer, or a 5xx) and
    /// `wharf_router_request_duration_seconds`, labelled by environment and instance.
    fn count(&self, env: u64, instance: u64, failed: bool, latency: Duration) {
        let labels = [("env", env.to_string()), ("instance", instance.to_string())];
        metrics::counter!("wharf_router_requests_total", &labels).increment(1);
        if failed {
            metrics::counter!("wharf_router_errors_total", &labels).increment(1);
        }
        metrics::histogram!("wharf_router_request_duration_seconds", &labels).record(latency.as_secs_f64());
        let mut traffic = self.traffic.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = traffic.entry(instance).or_insert(InstanceTraffic {
            instance,
            ..InstanceTraffic::default()
        });
        entry.requests += 1;
        entry.errors += u64::from(failed);
        entry.latency_ms += latency.as_millis() as u64;
    }

    /// The counts of `instances` (zero for one never seen).
    pub(crate) fn traffic_of(&self, instances: &[u64]) -> Vec<InstanceTraffic> {
        let traffic = self.traffic.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        instances
            .iter()
            .map(|id| traffic.get(id).copied().unwrap_or(InstanceTraffic { instance: *id, ..InstanceTraffic::default() }))
            .collect()
    }
}

impl Default for Apps {
    fn default() -> Self {
        Apps {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client without TLS always builds"),
            turn: AtomicU64::new(0),
            traffic: Default::default(),
        }
    }
}

async fn act(state: &FrontState, action: DeployAction) -> Result<NodeReply, ApiError> {
    crate::api::call_any_node(state, &NodeRequest::Deploy(action)).await
}

async fn act_for_id(state: &FrontState, action: DeployAction) -> Result<u64, ApiError> {
    match act(state, action).await? {
        NodeReply::Id(id) => Ok(id),
        other => Err(unexpected(other)),
    }
}


fn environment_of(state: &FrontState, id: u64) -> Result<EnvironmentRecord, ApiError> {
    state.directory.environment(id).ok_or_else(|| ApiError::NotFound {
        what: format!("environment {id}"),
    })
}

/// A repository named by the seed's `project_id`: its id, or `owner/name`.
fn project(state: &FrontState, project_id: &Value) -> Result<RepoRecord, ApiError> {
    let found = match project_id {
        Value::Number(id) => id.as_u64().and_then(|id| state.directory.repo_by_id(wharf_proto::RepoId(id))),
        Value::String(text) => match text.parse::<u64>() {
            Ok(id) => state.directory.repo_by_id(wharf_proto::RepoId(id)),
            Err(_) => state.directory.repo(&RepoName::parse(text)?),
        },
        _ => return Err(ApiError::invalid("project_id is a repository id or owner/name")),
    };
    found.ok_or_else(|| ApiError::RepoNotFound {
        repo: project_id.to_string(),
    })
}

/// An environment as the API shows it: its record, its repository and its instances.
#[derive(Serialize, ToSchema)]
struct EnvironmentView {
    #[serde(flatten)]
    env: EnvironmentRecord,
    /// The same as `id`, in the seed API's words.
    env_id: String,
    /// The repository's `owner/name`.
    project: Option<String>,
    instances: Vec<InstanceRecord>,
}

/// A deployment as the API shows it: its record and how far it is.
#[derive(Serialize, ToSchema)]
struct DeploymentView {
    #[serde(flatten)]
    deployment: DeploymentRecord,
    /// The same as `id`, in the seed API's words.
    deployment_id: String,
    progress: Progress,
}

/// How far a deployment is.
#[derive(Serialize, ToSchema, PartialEq)]
struct Progress {
    /// `waiting`, `planning`, `rolling out`, `rolling back`, `waiting for promotion` or `finished`.
    phase: String,
    /// The share of the instances it wants that run its target revision healthy and in traffic.
    percent: usize,
}

/// An environment as the API shows it (an [`EnvironmentView`] whose ids carry their kind).
fn environment_json(state: &FrontState, env: &EnvironmentRecord) -> Value {
    let view = EnvironmentView {
        env: env.clone(),
        env_id: IdKind::Environment.format(env.id),
        project: state.directory.repo_by_id(env.repo).map(|r| r.name.to_string()),
        instances: state.directory.instances(Some(env.id)),
    };
    let mut value = typed_ids(json!(view), IdKind::Environment);
    if let Some(instances) = value["instances"].as_array_mut() {
        for instance in instances {
            *instance = typed_ids(instance.take(), IdKind::Instance);
        }
    }
    value
}

/// A deployment as the API shows it (a [`DeploymentView`] whose ids carry their kind).
fn deployment_json(state: &FrontState, deployment: &DeploymentRecord) -> Value {
    let view = DeploymentView {
        deployment: deployment.clone(),
        deployment_id: IdKind::Deployment.format(deployment.id),
        progress: progress(state, deployment),
    };
    typed_ids(json!(view), IdKind::Deployment)
}

/// A record's `id` (of `kind`) and `env` as the API shows them: `deploy-7`, `env-3` (issue 13,
/// point 3). Records store the bare numbers; the prefix is added here, at the boundary.
fn typed_ids(mut value: Value, kind: IdKind) -> Value {
    if let Some(id) = value["id"].as_u64() {
        value["id"] = json!(kind.format(id));
    }
    if let Some(env) = value["env"].as_u64() {
        value["env"] = json!(IdKind::Environment.format(env));
    }
    value
}

/// An id as a client writes it: a number, or a string (`env-3`, `"3"`); see [`IdKind::parse`].
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum IdInput {
    Number(u64),
    Text(String),
}

impl IdInput {
    fn of(&self, kind: IdKind) -> Result<u64, ApiError> {
        match self {
            IdInput::Number(id) => Ok(*id),
            IdInput::Text(text) => kind.parse(text),
        }
    }
}

/// How far a deployment is: its phase, and the percentage of the instances it wants that run
/// its target revision healthy and in traffic.
fn progress(state: &FrontState, deployment: &DeploymentRecord) -> Progress {
    use wharf_proto::deploy::DeploymentStatus::*;
    let target = deployment.reverting_to.unwrap_or(deployment.revision);
    let desired = deployment.release.as_ref().map_or(0, |r| r.settings.instances) as usize;
    let serving = state
        .directory
        .instances(Some(deployment.env))
        .iter()
        .filter(|i| i.revision == target && i.health == InstanceHealth::Healthy && i.weight > 0)
        .count();
    let (phase, percent) = match deployment.status {
        Pending => ("waiting", 0),
        InProgress if deployment.release.is_none() => ("planning", 0),
        InProgress if deployment.reverting_to.is_some() => ("rolling back", serving * 100 / desired.max(1)),
        InProgress => ("rolling out", serving * 100 / desired.max(1)),
        Paused => ("waiting for promotion", 0),
        Completed | RolledBack | Failed => ("finished", 100),
    };
    Progress {
        phase: phase.to_owned(),
        percent: percent.min(100),
    }
}

/// Checks an environment's name: it is part of a URL and of a host name.
fn check_env_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::InvalidName {
            name: name.chars().take(200).collect(),
            reason: "an environment name has 1 to 63 lowercase letters, digits and '-', not first".into(),
        })
    }
}

fn check_config(config: &EnvConfig) -> Result<(), ApiError> {
    let fields = [("cpu", config.cpu, 64.0), ("memory", config.memory, 512.0), ("storage", config.storage, 4096.0)];
    for (name, value, max) in fields {
        if !(0.0..=max).contains(&value) {
            return Err(ApiError::invalid(format!("config.{name} must be between 0 and {max}, not {value}")));
        }
    }
    Ok(())
}

// ---- environments ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEnvironment {
    /// The repository: its id (a number or a string of digits) or `owner/name`.
    #[schema(value_type = String)]
    project_id: Value,
    /// 1 to 63 lowercase letters, digits and `-`, not first.
    env_name: String,
    #[serde(default)]
    config: EnvConfig,
    #[serde(default)]
    protected: bool,
}

#[utoipa::path(post, path = "/api/v1/environments", tag = tags::DEPLOY, request_body = CreateEnvironment, responses((status = 201, description = "Created", body = EnvironmentMessage)))]
async fn create_environment(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<CreateEnvironment>) -> ApiResult {
    writer(&state, &headers)?;
    let repo = project(&state, &body.project_id)?;
    check_env_name(&body.env_name)?;
    check_config(&body.config)?;
    let action = DeployAction::CreateEnvironment {
        repo: repo.id,
        name: body.env_name,
        config: body.config,
        protected: body.protected,
    };
    let id = act_for_id(&state, action).await?;
    crate::api::visible("the environment", || state.directory.environment(id)).await?;
    created(EnvironmentMessage {
        message: "Environment created successfully".into(),
        env_id: IdKind::Environment.format(id),
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EnvId {
    /// The environment: `env-3`, or its number.
    #[param(value_type = String)]
    env_id: IdInput,
}

/// What happened to an environment, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct EnvironmentMessage {
    message: String,
    /// `env-3`.
    env_id: String,
}

/// What happened to a deployment, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct DeploymentMessage {
    message: String,
    /// `deploy-7`.
    deployment_id: String,
}

/// Environments.
#[derive(Serialize, ToSchema)]
struct EnvironmentList {
    #[schema(value_type = Vec<EnvironmentView>)]
    environments: Vec<Value>,
}

/// An environment's deployments, newest first.
#[derive(Serialize, ToSchema)]
struct DeploymentList {
    #[schema(value_type = Vec<DeploymentView>)]
    deployments: Vec<Value>,
}

/// A deployment's status, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct DeploymentStatusView {
    /// `deploy-7`.
    deployment_id: String,
    status: DeploymentStatus,
    /// How far it is, in words.
    details: String,
    /// Its revision number within the environment.
    revision: u64,
}

#[utoipa::path(delete, path = "/api/v1/environments", tag = tags::DEPLOY, description = "The arguments come as query parameters, or as the same fields in a JSON body.", params(EnvId), responses((status = 200, description = "Deleted", body = EnvironmentMessage)))]
async fn delete_environment(State(state): State<Shared>, headers: HeaderMap, BodyOrQuery(body): BodyOrQuery<EnvId>) -> ApiResult {
    writer(&state, &headers)?;
    let env = body.env_id.of(IdKind::Environment)?;
    environment_of(&state, env)?;
    act(&state, DeployAction::DeleteEnvironment { env }).await?;
    json_ok(EnvironmentMessage {
        message: "Environment deleted successfully".into(),
        env_id: IdKind::Environment.format(env),
    })
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this repository's: its id or `owner/name`.
    project_id: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/environments", tag = tags::DEPLOY, params(ListQuery), responses((status = 200, description = "Environments", body = EnvironmentList)))]
async fn list_environments(
    State(state): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let Query(query) = query.map_err(crate::api::bad_query)?;
    let repo = query.project_id.map(|p| project(&state, &Value::String(p))).transpose()?;
    let environments = state
        .directory
        .environments(repo.map(|r| r.id))
        .iter()
        .map(|e| environment_json(&state, e))
        .collect();
    json_ok(EnvironmentList { environments })
}

#[utoipa::path(get, path = "/api/v1/environments/{id}", tag = tags::DEPLOY, params(DeployIdPath), responses((status = 200, description = "The environment and its instances", body = EnvironmentView)))]
async fn show_environment(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<String>) -> ApiResult {
    reader(&state, &headers)?;
    let id = IdKind::Environment.parse(&id)?;
    json_ok(environment_json(&state, &environment_of(&state, id)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateEnvironment {
    config: Option<EnvConfig>,
    protected: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/environments/{id}", tag = tags::DEPLOY, params(DeployIdPath), request_body = UpdateEnvironment, responses((status = 200, description = "The environment as changed", body = EnvironmentView)))]
async fn update_environment(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(id): JsonPath<String>,
    JsonBody(body): JsonBody<UpdateEnvironment>,
) -> ApiResult {
    writer(&state, &headers)?;
    let id = IdKind::Environment.parse(&id)?;
    environment_of(&state, id)?;
    if let Some(config) = &body.config {
        check_config(config)?;
    }
    act(&state, DeployAction::UpdateEnvironment { env: id, config: body.config, protected: body.protected }).await?;
    json_ok(environment_json(&state, &environment_of(&state, id)?))
}

#[utoipa::path(get, path = "/api/v1/environments/{id}/deployments", tag = tags::DEPLOY, params(DeployIdPath), responses((status = 200, description = "Its deployments, newest first", body = DeploymentList)))]
async fn history(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<String>) -> ApiResult {
    reader(&state, &headers)?;
    let id = IdKind::Environment.parse(&id)?;
    environment_of(&state, id)?;
    let deployments = state.directory.deployments(Some(id)).iter().rev().map(|d| deployment_json(&state, d)).collect();
    json_ok(DeploymentList { deployments })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The revision to return to.
    revision: u64,
}

#[utoipa::path(post, path = "/api/v1/environments/{id}/rollback", tag = tags::DEPLOY, params(DeployIdPath), request_body = RollbackBody, responses((status = 201, description = "A rollback deployment started", body = DeploymentMessage)))]
async fn rollback(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(id): JsonPath<String>,
    JsonBody(body): JsonBody<RollbackBody>,
) -> ApiResult {
    writer(&state, &headers)?;
    let id = IdKind::Environment.parse(&id)?;
    environment_of(&state, id)?;
    let action = DeployAction::CreateDeployment {
        env: id,
        kind: DeploymentKind::Rollback { to_revision: body.revision },
        branch: None,
        sha: String::new(),
    };
    let deployment = act_for_id(&state, action).await?;
    created(DeploymentMessage {
        message: format!("Rolling back to revision {}", body.revision),
        deployment_id: IdKind::Deployment.format(deployment),
    })
}

// ---- deployments ----

#[derive(Deserialize, ToSchema)]
struct CreateDeployment {
    /// The repository: `owner/name` or its clone URL.
    repo_url: String,
    /// The branch whose tip is deployed.
    branch_name: String,
    /// The environment, of that repository: `env-3`, or its number.
    #[schema(value_type = String)]
    env_id: IdInput,
}

/// Deploys a branch's tip to an environment: an explicit call, so protected environments too.
#[utoipa::path(post, path = "/api/v1/deployments", tag = tags::DEPLOY, request_body = CreateDeployment, responses((status = 201, description = "Started", body = DeploymentMessage)))]
async fn create_deployment(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<CreateDeployment>) -> ApiResult {
    writer(&state, &headers)?;
    let name = RepoName::parse(&body.repo_url)?;
    let env = environment_of(&state, body.env_id.of(IdKind::Environment)?)?;
    let repo = crate::api::record_of(&state, &name)?;
    if env.repo != repo.id {
        return Err(ApiError::invalid(format!("environment {} belongs to another repository", env.id)).into());
    }
    let sha = match repo_call(&state, &name, RepoRequest::ListBranches).await? {
        NodeReply::Branches(branches) => branches
            .into_iter()
            .find(|b| b.name == body.branch_name)
            .map(|b| b.commit)
            .ok_or_else(|| ApiError::RevisionNotFound {
                repo: name.to_string(),
                rev: body.branch_name.clone(),
            })?,
        other => return Err(unexpected(other).into()),
    };
    let action = DeployAction::CreateDeployment {
        env: env.id,
        kind: DeploymentKind::Deploy,
        branch: Some(body.branch_name),
        sha,
    };
    let id = act_for_id(&state, action).await?;
    created(DeploymentMessage {
        message: "Deployment started".into(),
        deployment_id: IdKind::Deployment.format(id),
    })
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeploymentFilter {
    /// Only this environment's: `env-3`, or its number.
    #[param(value_type = Option<String>)]
    environment: Option<IdInput>,
    /// Only those with this status: `pending`, `in-progress`, `paused`, `completed`, `failed`
    /// or `rolled-back`.
    status: Option<String>,
    /// Only those of this commit.
    sha: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<usize>,
}

/// Deployments of every environment, newest first, filtered by environment, status or commit.
#[utoipa::path(get, path = "/api/v1/deployments", tag = tags::DEPLOY, params(DeploymentFilter), responses((status = 200, description = "Deployments, newest first", body = DeploymentList)))]
async fn list_deployments(
    State(state): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<DeploymentFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let Query(filter) = query.map_err(crate::api::bad_query)?;
    let env = filter.environment.map(|e| e.of(IdKind::Environment)).transpose()?;
    if let Some(env) = env {
        environment_of(&state, env)?;
    }
    let status = filter
        .status
        .map(|s| {
            serde_json::from_value::<DeploymentStatus>(json!(s))
                .map_err(|_| ApiError::invalid(format!("unknown status {s:?}: pending, in-progress, paused, completed, failed or rolled-back")))
        })
        .transpose()?;
    let mut deployments = state.directory.deployments(env);
    deployments.sort_by_key(|d| std::cmp::Reverse((d.created_ms, d.id)));
    let deployments = deployments
        .iter()
        .filter(|d| status.is_none_or(|s| d.status == s))
        .filter(|d| filter.sha.as_ref().is_none_or(|sha| &d.sha == sha))
        .take(filter.limit.unwrap_or(100).clamp(1, 1000))
        .map(|d| deployment_json(&state, d))
        .collect();
    json_ok(DeploymentList { deployments })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeploymentId {
    /// The deployment: `deploy-7`, or its number.
    #[param(value_type = String)]
    deployment_id: IdInput,
}

#[utoipa::path(get, path = "/api/v1/deployments/status", tag = tags::DEPLOY, description = "The arguments come as query parameters, or as the same fields in a JSON body.", params(DeploymentId), responses((status = 200, description = "Its status", body = DeploymentStatusView)))]
async fn deployment_status(State(state): State<Shared>, headers: HeaderMap, BodyOrQuery(body): BodyOrQuery<DeploymentId>) -> ApiResult {
    reader(&state, &headers)?;
    let id = body.deployment_id.of(IdKind::Deployment)?;
    let deployment = crate::api::visible("the deployment", || state.directory.deployment(id))
        .await
        .map_err(|_| ApiError::NotFound {
            what: format!("deployment {}", IdKind::Deployment.format(id)),
        })?;
    json_ok(DeploymentStatusView {
        deployment_id: IdKind::Deployment.format(deployment.id),
        status: deployment.status,
        details: deployment.details,
        revision: deployment.revision,
    })
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = tags::DEPLOY, params(DeployIdPath), responses((status = 200, description = "The deployment", body = DeploymentView)))]
async fn show_deployment(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<String>) -> ApiResult {
    reader(&state, &headers)?;
    let id = IdKind::Deployment.parse(&id)?;
    let deployment = state.directory.deployment(id).ok_or_else(|| ApiError::NotFound {
        what: format!("deployment {id}"),
    })?;
    json_ok(deployment_json(&state, &deployment))
}

/// A deployment's events live, as Server-Sent Events: `event` for each line of its history
/// (the id is its index, so `Last-Event-ID` resumes), `status` when its status or details
/// change, and a final `end`.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/events", tag = tags::DEPLOY, description = "Server-Sent Events: `event` for each line of its history (the id is its index, so `Last-Event-ID` resumes), `status` when its status or details change, and a final `end`.", params(DeployIdPath), responses((status = 200, description = "The event stream", content_type = "text/event-stream", body = String)))]
async fn deployment_events(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<String>) -> ApiResult {
    use axum::response::sse::{Event, KeepAlive, Sse};
    reader(&state, &headers)?;
    let id = IdKind::Deployment.parse(&id)?;
    state.directory.deployment(id).ok_or_else(|| ApiError::NotFound {
        what: format!("deployment {id}"),
    })?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(0, |last| last + 1);
    let start = (state, resume, String::new(), false);
    let stream = futures::stream::unfold(start, move |(state, mut next, mut last_status, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let deployment = state.directory.deployment(id)?;
            if let Some(event) = deployment.events.get(next) {
                let sent = Event::default().event("event").id(next.to_string()).data(json!(event).to_string());
                next += 1;
                return Some((Ok::<_, std::convert::Infallible>(sent), (state, next, last_status, false)));
            }
            let status = json!({"status": deployment.status, "details": deployment.details, "progress": progress(&state, &deployment)}).to_string();
            if status != last_status {
                last_status = status.clone();
                let finished = deployment.status.is_finished();
                let kind = if finished { "end" } else { "status" };
                return Some((Ok(Event::default().event(kind).data(status)), (state, next, last_status, finished)));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// The output of one instance, read from the node that runs or ran it. An instance that has
/// stopped (a failed release after its rollback, say) has no record any more, but its output
/// stays on the node's disk: it is looked for on every storage node (issue 13, point 8).
#[utoipa::path(get, path = "/api/v1/environments/{id}/instances/{instance}/log", tag = tags::DEPLOY, description = "The output of an instance, running or stopped: a failed instance's output stays readable after its rollback. Its id is in the deployment's events (`instance 5 of revision 3 is unhealthy`).", params(DeployIdPath, ("instance" = String, Path, description = "The instance: `inst-12`, or its number")), responses((status = 200, description = "The instance's output", content_type = "text/plain", body = String)))]
async fn instance_log(State(state): State<Shared>, headers: HeaderMap, JsonPath((env, id)): JsonPath<(String, String)>) -> ApiResult {
    reader(&state, &headers)?;
    let (env, id) = (IdKind::Environment.parse(&env)?, IdKind::Instance.parse(&id)?);
    let not_found = || ApiError::NotFound {
        what: format!("instance {id} of environment {env}"),
    };
    let live = state.directory.instances(Some(env)).into_iter().find(|i| i.id == id);
    let candidates: Vec<NodeId> = match live {
        Some(instance) => vec![instance.node],
        None => {
            environment_of(&state, env)?;
            if state.directory.instances(None).iter().any(|i| i.id == id) {
                // Running, but in another environment.
                return Err(not_found().into());
            }
            state.directory.nodes().into_iter().map(|n| n.id).collect()
        }
    };
    for node in candidates {
        match read_instance_log(&state, node, id).await {
            Ok(log) => return Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response()),
            Err(ApiError::NotFound { .. }) => continue,
            // A node that is down may hold it; the others are still asked.
            Err(error @ ApiError::Unavailable { .. }) => tracing::debug!(%error, node = %node, "instance log not read"),
            Err(error) => return Err(error.into()),
        }
    }
    Err(not_found().into())
}

/// Reads the whole output of instance `id` from `node`.
async fn read_instance_log(state: &FrontState, node: NodeId, id: u64) -> Result<Vec<u8>, ApiError> {
    let mut log = Vec::new();
    loop {
        let request = NodeRequest::InstanceLog { instance: id, offset: log.len() as u64 };
        match state.nodes.call(node, &request).await? {
            NodeReply::Chunk(chunk) => {
                log.extend(chunk.data);
                if chunk.eof {
                    return Ok(log);
                }
            }
            other => return Err(unexpected(other)),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/deployments/{id}/promote", tag = tags::DEPLOY, params(DeployIdPath), responses((status = 200, description = "Promotion requested", body = DeploymentMessage)))]
async fn promote(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<String>) -> ApiResult {
    writer(&state, &headers)?;
    let id = IdKind::Deployment.parse(&id)?;
    state.directory.deployment(id).ok_or_else(|| ApiError::NotFound {
        what: format!("deployment {id}"),
    })?;
    act(&state, DeployAction::PromoteDeployment { deployment: id }).await?;
    json_ok(DeploymentMessage {
        message: "Promotion requested".into(),
        deployment_id: IdKind::Deployment.format(id),
    })
}

// ---- the application router ----

/// Routes `Host: {env}.{name}.{owner}.localhost` to the environment's instances, path and all;
/// every other request goes on to the API.
pub(crate) async fn route_by_host(State(state): State<Shared>, request: Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned());
    let labels: Option<Vec<String>> = host.and_then(|h| {
        let labels: Vec<String> = h.split('.').map(str::to_owned).collect();
        (labels.len() == 4 && labels[3] == "localhost").then_some(labels)
    });
    let Some(labels) = labels else { return next.run(request).await };
    let path = AppPath {
        env: labels[0].clone(),
        name: labels[1].clone(),
        owner: labels[2].clone(),
        rest: request.uri().path().trim_start_matches('/').to_owned(),
    };
    let mut response = match app_for(&state, &path, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response.extensions_mut().insert(crate::metrics::RouteLabel("{env}.{name}.{owner}.localhost/{*rest}"));
    response
}

#[derive(Deserialize)]
struct AppPath {
    owner: String,
    name: String,
    env: String,
    #[serde(default)]
    rest: String,
}

async fn app(State(state): State<Shared>, JsonPath(path): JsonPath<AppPath>, request: Request) -> ApiResult {
    app_for(&state, &path, request).await
}

async fn app_for(state: &FrontState, path: &AppPath, request: Request) -> ApiResult {
    let env = app_environment(state, path)?;
    let candidates: Vec<(InstanceRecord, u64)> = state
        .directory
        .instances(Some(env.id))
        .into_iter()
        .filter(|i| i.health == InstanceHealth::Healthy && i.weight > 0 && i.port.is_some())
        .map(|i| {
            let weight = i.weight as u64;
            (i, weight)
        })
        .collect();
    proxy(state, &env, candidates, &path.rest, request).await
}

async fn preview(State(state): State<Shared>, JsonPath(path): JsonPath<AppPath>, request: Request) -> ApiResult {
    let env = app_environment(&state, &path)?;
    let instances: Vec<InstanceRecord> = state
        .directory
        .instances(Some(env.id))
        .into_iter()
        .filter(|i| i.health == InstanceHealth::Healthy && i.port.is_some())
        .collect();
    let newest = instances.iter().map(|i| i.revision).max();
    let candidates = instances.into_iter().filter(|i| Some(i.revision) == newest).map(|i| (i, 1)).collect();
    proxy(&state, &env, candidates, &path.rest, request).await
}

fn app_environment(state: &FrontState, path: &AppPath) -> Result<EnvironmentRecord, ApiError> {
    let name = crate::api::repo_name(&path.owner, &path.name)?;
    let repo = crate::api::record_of(state, &name)?;
    state
        .directory
        .environments(Some(repo.id))
        .into_iter()
        .find(|e| e.name == path.env)
        .ok_or_else(|| ApiError::NotFound {
            what: format!("environment {} of {name}", path.env),
        })
}

/// Passes the request to one of `candidates` (instance, weight), chosen in weighted turn; an
/// instance that does not answer is skipped for the next, so a retiring or dead instance
/// costs a request nothing. Wharf's credentials are removed first (a Wharf token in
/// `Authorization`, Wharf's session cookie): an app never sees them.
async fn proxy(state: &FrontState, env: &EnvironmentRecord, mut candidates: Vec<(InstanceRecord, u64)>, rest: &str, request: Request) -> ApiResult {
    let (mut parts, body) = request.into_parts();
    crate::auth::strip_wharf_credentials(&mut parts.headers, |token| state.directory.authenticate(token).is_some());
    let body = axum::body::to_bytes(body, MAX_APP_BODY).await.map_err(|_| ApiError::TooLarge {
        what: "the request body".into(),
        limit: MAX_APP_BODY as u64,
    })?;
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    while !candidates.is_empty() {
        let total: u64 = candidates.iter().map(|(_, w)| w).sum();
        // A scrambled counter, not the counter itself: consecutive requests spread over the
        // instances by weight instead of going to each in long runs.
        let mut turn = scramble(state.apps.turn.fetch_add(1, Ordering::Relaxed)) % total.max(1);
        let index = candidates
            .iter()
            .position(|(_, weight)| {
                if turn < *weight {
                    return true;
                }
                turn -= weight;
                false
            })
            .unwrap_or(0);
        let (instance, _) = candidates.remove(index);
        let url = format!("http://{}:{}/{rest}{query}", instance.host, instance.port.unwrap_or_default());
        let started = std::time::Instant::now();
        match forward(state, &parts, body.clone(), &url, &instance).await {
            Ok(response) => {
                state.apps.count(env.id, instance.id, response.status().is_server_error(), started.elapsed());
                return Ok(response);
            }
            Err(error) => {
                state.apps.count(env.id, instance.id, true, started.elapsed());
                tracing::debug!(instance = instance.id, %error, "instance did not answer; trying another");
            }
        }
    }
    Err(ApiError::Unavailable {
        what: format!("environment {}", env.name),
        reason: "no healthy instance answers".into(),
        retry_after_secs: 1,
    }
    .into())
}

/// SplitMix64: a bijective scramble of the request counter.
fn scramble(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Headers that belong to one hop, not to the request or response.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "host" | "content-length"
    )
}

async fn forward(
    state: &FrontState,
    parts: &axum::http::request::Parts,
    body: Bytes,
    url: &str,
    instance: &InstanceRecord,
) -> Result<Response, reqwest::Error> {
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = state.apps.client.request(method, url).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = request.send().await?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            axum::http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            if !is_hop_by_hop(&name) {
                headers.append(name, value);
            }
        }
    }
    headers.insert("x-wharf-instance", instance.id.into());
    headers.insert("x-wharf-revision", instance.revision.into());
    let bytes = answer.bytes().await?;
    Ok((status, headers, Body::from(bytes)).into_response())
}

/// The actor through which deployment controllers read this front's router counts: it joins
/// [`wharf_proto::ROUTERS_GROUP`], so a controller on any node finds every front. It also
/// tells where this front serves `/metrics`, which is how fronts list each other for
/// Prometheus.
struct RouterStatsActor;

impl ractor::Actor for RouterStatsActor {
    type Msg = wharf_proto::NodeMessage;
    type State = Shared;
    type Arguments = Shared;

    async fn pre_start(&self, _myself: ractor::ActorRef<Self::Msg>, state: Shared) -> Result<Shared, ractor::ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Shared,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let (call, reply) = message.into_call();
        let result = match call.map(|envelope| envelope.request) {
            Ok(NodeRequest::RouterStats { instances }) => Ok(NodeReply::RouterStats(state.apps.traffic_of(&instances))),
            Ok(NodeRequest::MetricsAddress) => Ok(NodeReply::MetricsAddress(state.config.metrics_addr.clone())),
            Ok(_) => Err(ApiError::invalid("a front answers only router statistics and its metrics address")),
            Err(error) => Err(ApiError::invalid(format!("undecodable request: {error}"))),
        };
        if let Ok(encoded) = wharf_proto::codec::encode(&result) {
            let _ = reply.send(encoded);
        }
        Ok(())
    }
}

/// Starts this front's router-statistics actor.
pub(crate) fn spawn_router_stats(state: Shared) {
    tokio::spawn(async move {
        match ractor::Actor::spawn(None, RouterStatsActor, state).await {
            Ok((actor, _)) => ractor::pg::join(wharf_proto::ROUTERS_GROUP.to_owned(), vec![actor.get_cell()]),
            Err(error) => tracing::error!(%error, "the router statistics actor did not start; canary checks see no traffic"),
        }
    });
}
