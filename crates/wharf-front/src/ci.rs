//! The CI API: pipelines, jobs, their logs (live as Server-Sent Events) and artifacts, CI
//! variables, and the seed's test trigger and results.
//!
//! Pipeline and job records are read from the local directory; logs and artifacts from the
//! node that ran the job; changes go to any storage node, which proposes them to Raft.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_proto::{
    ApiError, ArtifactFile, CiAction, JobRecord, JobStatus, NodeReply, NodeRequest, PipelineRecord, PipelineStatus, RepoId,
    RepoRequest, Variable, MAX_CHUNK_BYTES,
};

use crate::api::{bad_query, created, json_ok, reader, record_of, repo_call, repo_name, unexpected, writer, RepoPath};
use crate::error::HttpError;
use crate::extract::{BodyOrQuery, JsonBody, JsonPath};
use crate::openapi::{tags, IdPath};
use crate::FrontState;

type Shared = Arc<FrontState>;
type ApiResult = Result<Response, HttpError>;

/// How often a live log looks for more output.
const LOG_POLL: Duration = Duration::from_millis(250);
/// The longest CI variable value.
const MAX_VARIABLE_BYTES: usize = 64 * 1024;

/// The CI routes.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(list_pipelines, run_pipeline))
        .routes(routes!(list_variables, set_variable))
        .routes(routes!(delete_variable))
        .routes(routes!(show_pipeline))
        .routes(routes!(cancel_pipeline))
        .routes(routes!(show_job))
        .routes(routes!(job_log))
        .routes(routes!(retry_job))
        .routes(routes!(list_artifacts))
        .routes(routes!(download_artifact))
        .routes(routes!(seed_trigger))
        .routes(routes!(seed_results))
}

fn pipeline_of(state: &FrontState, id: u64) -> Result<PipelineRecord, ApiError> {
    state.directory.pipeline(id).ok_or_else(|| ApiError::NotFound { what: format!("pipeline {id}") })
}

fn job_of(state: &FrontState, id: u64) -> Result<JobRecord, ApiError> {
    state.directory.job(id).ok_or_else(|| ApiError::NotFound { what: format!("job {id}") })
}

/// A pipeline with its jobs, as the API shows it.
#[derive(Serialize, ToSchema)]
struct PipelineView {
    /// Its id.
    id: u64,
    /// The repository.
    repo: RepoId,
    /// The full ref pushed (`refs/heads/main`).
    ref_name: String,
    /// The same as `ref_name`.
    #[serde(rename = "ref")]
    ref_: String,
    /// The commit it runs.
    sha: String,
    status: PipelineStatus,
    /// Why the file was refused, when it was.
    error: Option<String>,
    created_ms: u64,
    finished_ms: Option<u64>,
    /// The mean of its jobs' coverage figures, if any job has one.
    coverage: Option<f64>,
    /// Its jobs, in stage order.
    jobs: Vec<JobView>,
}

/// A job as the API shows it: its record and how long it ran.
#[derive(Serialize, ToSchema)]
struct JobView {
    #[serde(flatten)]
    job: JobRecord,
    /// From start to finish, once it has finished.
    duration_ms: Option<u64>,
}

fn pipeline_json(state: &FrontState, pipeline: &PipelineRecord) -> PipelineView {
    let jobs: Vec<JobRecord> = pipeline.jobs.iter().filter_map(|job| state.directory.job(*job)).collect();
    PipelineView {
        id: pipeline.id,
        repo: pipeline.repo,
        ref_name: pipeline.ref_name.clone(),
        ref_: pipeline.ref_name.clone(),
        sha: pipeline.sha.clone(),
        status: pipeline.status,
        error: pipeline.error.clone(),
        created_ms: pipeline.created_ms,
        finished_ms: pipeline.finished_ms,
        coverage: mean_coverage(&jobs),
        jobs: jobs.iter().map(job_json).collect(),
    }
}

fn job_json(job: &JobRecord) -> JobView {
    let duration = job.started_ms.zip(job.finished_ms).map(|(start, end)| end.saturating_sub(start));
    JobView {
        job: job.clone(),
        duration_ms: duration,
    }
}

/// A pipeline in a list.
#[derive(Serialize, ToSchema)]
struct PipelineSummary {
    id: u64,
    /// The full ref pushed.
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
    status: PipelineStatus,
    error: Option<String>,
    created_ms: u64,
    finished_ms: Option<u64>,
}

/// A repository's latest pipelines (at most 100), newest first.
#[derive(Serialize, ToSchema)]
struct PipelineList {
    pipelines: Vec<PipelineSummary>,
}

/// The mean of the jobs' coverage figures, if any job has one.
fn mean_coverage(jobs: &[JobRecord]) -> Option<f64> {
    let figures: Vec<f64> = jobs.iter().filter_map(|j| j.coverage).collect();
    (!figures.is_empty()).then(|| (figures.iter().sum::<f64>() / figures.len() as f64 * 100.0).round() / 100.0)
}

/// Asks a reachable storage node to carry out a CI change.
async fn act(state: &FrontState, action: CiAction) -> Result<NodeReply, ApiError> {
    crate::api::call_any_node(state, &NodeRequest::Ci(action)).await
}

// ---- pipelines and jobs ----

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/pipelines", tag = tags::CI, params(RepoPath), responses((status = 200, description = "The latest pipelines", body = PipelineList)))]
async fn list_pipelines(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
    reader(&state, &headers)?;
    let record = record_of(&state, &repo_name(&owner, &name)?)?;
    let pipelines = state
        .directory
        .pipelines(record.id, 100)
        .into_iter()
        .map(|p| PipelineSummary {
            id: p.id,
            ref_: p.ref_name,
            sha: p.sha,
            status: p.status,
            error: p.error,
            created_ms: p.created_ms,
            finished_ms: p.finished_ms,
        })
        .collect();
    json_ok(PipelineList { pipelines })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RunPipelineBody {
    /// The branch whose tip runs.
    branch: String,
}

/// Runs the pipeline of a branch's tip, as a push would.
#[utoipa::path(post, path = "/api/v1/repos/{owner}/{name}/pipelines", tag = tags::CI, params(RepoPath), request_body = RunPipelineBody, responses((status = 201, description = "The pipeline started, as a push would", body = PipelineView)))]
async fn run_pipeline(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    JsonBody(body): JsonBody<RunPipelineBody>,
) -> ApiResult {
    writer(&state, &headers)?;
    let request = RepoRequest::TriggerPipeline {
        branch: body.branch,
        only: None,
    };
    match repo_call(&state, &repo_name(&owner, &name)?, request).await? {
        NodeReply::PipelineStarted(id) => created(pipeline_json(&state, &crate::api::visible("the pipeline", || state.directory.pipeline(id)).await?)),
        other => Err(unexpected(other).into()),
    }
}


#[utoipa::path(get, path = "/api/v1/pipelines/{id}", tag = tags::CI, params(IdPath), responses((status = 200, description = "The pipeline and its jobs", body = PipelineView)))]
async fn show_pipeline(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    reader(&state, &headers)?;
    json_ok(pipeline_json(&state, &pipeline_of(&state, id)?))
}

#[utoipa::path(post, path = "/api/v1/pipelines/{id}/cancel", tag = tags::CI, params(IdPath), responses((status = 200, description = "The pipeline, canceling", body = PipelineRecord)))]
async fn cancel_pipeline(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    writer(&state, &headers)?;
    pipeline_of(&state, id)?;
    match act(&state, CiAction::CancelPipeline { pipeline: id }).await? {
        NodeReply::Pipeline(pipeline) => json_ok(pipeline),
        other => Err(unexpected(other).into()),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = tags::CI, params(IdPath), responses((status = 200, description = "The job", body = JobView)))]
async fn show_job(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    reader(&state, &headers)?;
    json_ok(job_json(&job_of(&state, id)?))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = tags::CI, params(IdPath), responses((status = 200, description = "The job's pipeline", body = PipelineRecord)))]
async fn retry_job(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    writer(&state, &headers)?;
    job_of(&state, id)?;
    match act(&state, CiAction::RetryJob { job: id }).await? {
        NodeReply::Pipeline(pipeline) => json_ok(pipeline),
        other => Err(unexpected(other).into()),
    }
}

// ---- logs ----

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// Where to start, in bytes.
    offset: Option<u64>,
}

/// A job's log: as text (from `?offset=`, with the next offset and whether the log is
/// complete in headers), or, when the client accepts `text/event-stream`, live as Server-Sent
/// Events until the job ends.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = tags::CI, description = "As text from `offset` (headers `x-wharf-log-offset` and `x-wharf-log-complete` tell where the next read starts and whether the log is complete); or, with `Accept: text/event-stream`, live as Server-Sent Events (`log` with `{offset, text}`, `restart`, and a final `end`), resumable with `Last-Event-ID`.", params(IdPath, LogQuery), responses((status = 200, description = "The log", content_type = "text/plain", body = String)))]
async fn job_log(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(id): JsonPath<u64>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    reader(&state, &headers)?;
    let Query(query) = query.map_err(bad_query)?;
    let job = job_of(&state, id)?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    // A client that reconnects names the last event it saw; its id is the offset after it.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|id| id.parse::<u64>().ok());
    let offset = resume.or(query.offset).unwrap_or(0);
    if wants_events {
        return Ok(live_log(state, id, offset).into_response());
    }
    let (text, complete) = read_log_to_end(&state, &job, offset).await?;
    let next = offset + text.len() as u64;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::HeaderName::from_static("x-wharf-log-offset"), next.to_string()),
            (header::HeaderName::from_static("x-wharf-log-complete"), complete.to_string()),
        ],
        text,
    )
        .into_response())
}

/// One chunk of a job's log from its runner's node: the bytes and whether the log is complete.
async fn read_log_chunk(state: &FrontState, job: &JobRecord, offset: u64) -> Result<(Vec<u8>, bool), ApiError> {
    let Some(node) = job.node else {
        // Not started yet: nothing to read, and more to come.
        return Ok((Vec::new(), job.status.is_finished()));
    };
    match state.nodes.call(node, &NodeRequest::JobLog { job: job.id, offset }).await? {
        NodeReply::Chunk(chunk) => Ok((chunk.data, chunk.eof)),
        other => Err(unexpected(other)),
    }
}

async fn read_log_to_end(state: &FrontState, job: &JobRecord, mut offset: u64) -> Result<(Vec<u8>, bool), ApiError> {
    let mut log = Vec::new();
    loop {
        let (data, eof) = read_log_chunk(state, job, offset).await?;
        offset += data.len() as u64;
        let more = data.len() == MAX_CHUNK_BYTES;
        log.extend(data);
        if eof || !more {
            return Ok((log, eof));
        }
    }
}

/// Where a live log stream is.
struct LiveLog {
    state: Shared,
    job: u64,
    attempt: Option<u32>,
    offset: u64,
    ended: bool,
}

/// The log as Server-Sent Events: `log` events with `{"offset","text"}` (the event id is the
/// offset after the text, so a client that reconnects with `Last-Event-ID` misses nothing and
/// sees nothing twice), `restart` when the job starts a new attempt, and a final `end` with the
/// job's status. While the job runs only whole lines are sent.
fn live_log(state: Shared, job: u64, offset: u64) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let start = LiveLog {
        state,
        job,
        attempt: None,
        offset,
        ended: false,
    };
    let stream = futures::stream::unfold(start, |mut live| async move {
        if live.ended {
            return None;
        }
        let event = live.next_event().await;
        Some((Ok(event), live))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

impl LiveLog {
    async fn next_event(&mut self) -> Event {
        loop {
            let Some(job) = self.state.directory.job(self.job) else {
                self.ended = true;
                return Event::default().event("end").data(json!({"status": null, "error": "the job is gone"}).to_string());
            };
            if self.attempt.is_some_and(|attempt| attempt != job.attempt) {
                self.attempt = Some(job.attempt);
                self.offset = 0;
                return Event::default().event("restart").data(json!({"attempt": job.attempt}).to_string());
            }
            self.attempt = Some(job.attempt);
            match read_log_chunk(&self.state, &job, self.offset).await {
                Ok((mut data, eof)) => {
                    if !eof && data.len() < MAX_CHUNK_BYTES {
                        // Hold back a partial last line until it is whole.
                        data.truncate(data.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1));
                    }
                    if !data.is_empty() {
                        let at = self.offset;
                        self.offset += data.len() as u64;
                        let text = String::from_utf8_lossy(&data);
                        return Event::default()
                            .event("log")
                            .id(self.offset.to_string())
                            .data(json!({"offset": at, "text": text}).to_string());
                    }
                    if eof && job.status.is_finished() {
                        self.ended = true;
                        return Event::default().event("end").data(json!({"status": job.status, "attempt": job.attempt}).to_string());
                    }
                }
                // The runner's node is unreachable: its lease will run out and the job start
                // again elsewhere, which the next look sees.
                Err(error) => tracing::debug!(job = self.job, %error, "live log read failed"),
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

// ---- artifacts ----

#[utoipa::path(get, path = "/api/v1/jobs/{id}/artifacts", tag = tags::CI, params(IdPath), responses((status = 200, description = "The job's artifacts", body = ArtifactList)))]
async fn list_artifacts(State(state): State<Shared>, headers: HeaderMap, JsonPath(id): JsonPath<u64>) -> ApiResult {
    reader(&state, &headers)?;
    let job = job_of(&state, id)?;
    json_ok(ArtifactList {
        job: id,
        expire_ms: job.artifacts_expire_ms,
        artifacts: job.artifacts,
    })
}

/// A job's artifacts.
#[derive(Serialize, ToSchema)]
struct ArtifactList {
    /// The job.
    job: u64,
    /// When they are deleted (ms since the epoch).
    expire_ms: Option<u64>,
    artifacts: Vec<ArtifactFile>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/artifacts/{*path}", tag = tags::CI, params(IdPath, ("path" = String, Path, description = "The artifact's path in the job's workspace; it may hold slashes")), responses((status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>)))]
async fn download_artifact(State(state): State<Shared>, headers: HeaderMap, JsonPath((id, path)): JsonPath<(u64, String)>) -> ApiResult {
    reader(&state, &headers)?;
    let job = job_of(&state, id)?;
    let not_found = || ApiError::NotFound {
        what: format!("artifact {path} of job {id}"),
    };
    let file = job.artifacts.iter().find(|a| a.path == path).cloned().ok_or_else(not_found)?;
    let node = job.node.ok_or_else(not_found)?;
    if job.artifacts_expire_ms.is_some_and(|expiry| expiry <= now_ms()) {
        return Err(ApiError::NotFound {
            what: format!("artifact {path} of job {id} (it expired)"),
        }
        .into());
    }
    // The first chunk is read before answering, so a missing file is a clean 404.
    let first = read_artifact(&state, node, id, &path, 0).await?;
    let name = path.rsplit('/').next().unwrap_or(&path).replace('"', "");
    let rest = futures::stream::unfold(
        (state.clone(), first.eof, first.data.len() as u64),
        move |(state, eof, offset)| {
            let path = file.path.clone();
            async move {
                if eof {
                    return None;
                }
                match read_artifact(&state, node, id, &path, offset).await {
                    Ok(chunk) => {
                        let next = (state, chunk.eof, offset + chunk.data.len() as u64);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.data)), next))
                    }
                    Err(error) => Some((Err(std::io::Error::other(error.to_string())), (state, true, offset))),
                }
            }
        },
    );
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(first.data)) });
    let body = Body::from_stream(futures::StreamExt::chain(head, rest));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}

async fn read_artifact(state: &FrontState, node: wharf_proto::NodeId, job: u64, path: &str, offset: u64) -> Result<wharf_proto::SessionChunk, ApiError> {
    let request = NodeRequest::ReadArtifact {
        job,
        path: path.to_owned(),
        offset,
    };
    match state.nodes.call(node, &request).await? {
        NodeReply::Chunk(chunk) => Ok(chunk),
        other => Err(unexpected(other)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---- variables ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VariableBody {
    /// Letters, digits and underscores; not `CI`, `PATH`, `HOME` or `WHARF_*`.
    name: String,
    /// At most 64 KiB, without NUL.
    value: String,
    /// Masked in logs and hidden from the API (at least 4 bytes).
    #[serde(default)]
    secret: bool,
}

/// Checks a variable a user sets: a shell-safe name that does not shadow Wharf's own, and a
/// value a job's environment can hold.
fn check_variable(body: &VariableBody) -> Result<(), ApiError> {
    let name = &body.name;
    let valid_name = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(ApiError::InvalidName {
            name: name.chars().take(200).collect(),
            reason: "a variable name has 1 to 100 letters, digits and underscores and does not start with a digit".into(),
        });
    }
    if name.starts_with("WHARF_") || ["CI", "PATH", "HOME"].contains(&name.as_str()) {
        return Err(ApiError::InvalidName {
            name: name.clone(),
            reason: "CI, PATH, HOME and WHARF_* are set by Wharf".into(),
        });
    }
    if body.value.len() > MAX_VARIABLE_BYTES || body.value.contains('\0') {
        return Err(ApiError::invalid(format!("a variable's value is at most {MAX_VARIABLE_BYTES} bytes, without NUL")));
    }
    if body.secret && body.value.len() < 4 {
        return Err(ApiError::invalid("a secret variable's value has at least 4 bytes, or masking it would hide ordinary text"));
    }
    Ok(())
}

/// A CI variable as the API shows it: a secret's value is `null`.
#[derive(Serialize, ToSchema)]
struct VariableView {
    name: String,
    secret: bool,
    value: Option<String>,
}

/// A repository's CI variables.
#[derive(Serialize, ToSchema)]
struct VariableList {
    variables: Vec<VariableView>,
}

fn variable_json(variable: &Variable) -> VariableView {
    VariableView {
        name: variable.name.clone(),
        secret: variable.secret,
        value: (!variable.secret).then(|| variable.value.clone()),
    }
}

#[utoipa::path(get, path = "/api/v1/repos/{owner}/{name}/variables", tag = tags::CI, params(RepoPath), responses((status = 200, description = "The CI variables (a token is needed)", body = VariableList)))]
async fn list_variables(State(state): State<Shared>, headers: HeaderMap, JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>) -> ApiResult {
    writer(&state, &headers)?;
    let record = record_of(&state, &repo_name(&owner, &name)?)?;
    let variables = state.directory.variables(record.id).iter().map(variable_json).collect();
    json_ok(VariableList { variables })
}

#[utoipa::path(post, path = "/api/v1/repos/{owner}/{name}/variables", tag = tags::CI, params(RepoPath), request_body = VariableBody, responses((status = 201, description = "Set", body = VariableView)))]
async fn set_variable(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath(RepoPath { owner, name }): JsonPath<RepoPath>,
    JsonBody(body): JsonBody<VariableBody>,
) -> ApiResult {
    writer(&state, &headers)?;
    let record = record_of(&state, &repo_name(&owner, &name)?)?;
    check_variable(&body)?;
    let variable = Variable {
        name: body.name,
        value: body.value,
        secret: body.secret,
    };
    act(&state, CiAction::SetVariable { repo: record.id, variable: variable.clone() }).await?;
    created(variable_json(&variable))
}

#[utoipa::path(delete, path = "/api/v1/repos/{owner}/{name}/variables/{variable}", tag = tags::CI, params(RepoPath, ("variable" = String, Path, description = "The variable's name")), responses((status = 204, description = "Deleted")))]
async fn delete_variable(
    State(state): State<Shared>,
    headers: HeaderMap,
    JsonPath((owner, name, variable)): JsonPath<(String, String, String)>,
) -> ApiResult {
    writer(&state, &headers)?;
    let record = record_of(&state, &repo_name(&owner, &name)?)?;
    act(&state, CiAction::DeleteVariable { repo: record.id, name: variable }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- the seed's test API ----

#[derive(Deserialize, ToSchema)]
struct SeedTrigger {
    /// The repository: `owner/name` or its clone URL.
    repo_url: String,
    /// The branch whose tip is tested.
    branch_name: String,
    /// A stage or job name (unit, integration, e2e); all jobs when absent.
    test_type: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tests/trigger", tag = tags::SEED, request_body = SeedTrigger, responses((status = 201, description = "The run started", body = TestsTriggered)))]
async fn seed_trigger(State(state): State<Shared>, headers: HeaderMap, JsonBody(body): JsonBody<SeedTrigger>) -> ApiResult {
    writer(&state, &headers)?;
    let name = wharf_proto::RepoName::parse(&body.repo_url)?;
    let request = RepoRequest::TriggerPipeline {
        branch: body.branch_name,
        only: body.test_type.filter(|t| !t.is_empty()),
    };
    match repo_call(&state, &name, request).await? {
        NodeReply::PipelineStarted(id) => created(TestsTriggered {
            message: "Tests triggered successfully".into(),
            test_id: id,
        }),
        other => Err(unexpected(other).into()),
    }
}

/// A test run started, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct TestsTriggered {
    message: String,
    /// The pipeline's id.
    test_id: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SeedResults {
    /// The `test_id` the trigger returned.
    test_id: u64,
}

/// A test run's results, in the seed API's words.
#[derive(Serialize, ToSchema)]
struct TestResults {
    test_id: u64,
    status: PipelineStatus,
    coverage: Option<f64>,
    details: TestDetails,
}

/// The details of a test run.
#[derive(Serialize, ToSchema)]
struct TestDetails {
    /// The full ref tested.
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
    error: Option<String>,
    tests: TestCounts,
    failures: Vec<FailureView>,
    /// The jobs that failed or timed out.
    failed_jobs: Vec<String>,
    jobs: Vec<JobView>,
}

/// Test cases counted over every job's JUnit report.
#[derive(Serialize, ToSchema)]
struct TestCounts {
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// A failed test case and its job.
#[derive(Serialize, ToSchema)]
struct FailureView {
    job: String,
    suite: String,
    class: String,
    name: String,
    message: String,
}

#[utoipa::path(get, path = "/api/v1/tests/results", tag = tags::SEED, description = "The arguments come as query parameters, or as the same fields in a JSON body.", params(SeedResults), responses((status = 200, description = "The run's results", body = TestResults)))]
async fn seed_results(State(state): State<Shared>, headers: HeaderMap, BodyOrQuery(body): BodyOrQuery<SeedResults>) -> ApiResult {
    reader(&state, &headers)?;
    let pipeline = state.directory.pipeline(body.test_id).ok_or_else(|| ApiError::NotFound {
        what: format!("test run {}", body.test_id),
    })?;
    let jobs: Vec<JobRecord> = pipeline.jobs.iter().filter_map(|job| state.directory.job(*job)).collect();
    let count = |pick: fn(&wharf_proto::TestReport) -> u64| jobs.iter().filter_map(|j| j.tests.as_ref()).map(pick).sum::<u64>();
    let failures = jobs
        .iter()
        .filter_map(|j| j.tests.as_ref().map(|t| (j, t)))
        .flat_map(|(job, tests)| {
            tests.failures.iter().map(move |f| FailureView {
                job: job.name.clone(),
                suite: f.suite.clone(),
                class: f.class.clone(),
                name: f.name.clone(),
                message: f.message.clone(),
            })
        })
        .collect();
    let failed_jobs = jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Failed | JobStatus::TimedOut))
        .map(|j| j.name.clone())
        .collect();
    json_ok(TestResults {
        test_id: pipeline.id,
        status: pipeline.status,
        coverage: mean_coverage(&jobs),
        details: TestDetails {
            ref_: pipeline.ref_name.clone(),
            sha: pipeline.sha.clone(),
            error: pipeline.error.clone(),
            tests: TestCounts {
                passed: count(|t| t.passed),
                failed: count(|t| t.failed),
                skipped: count(|t| t.skipped),
            },
            failures,
            failed_jobs,
            jobs: jobs.iter().map(job_json).collect(),
        },
    })
}
