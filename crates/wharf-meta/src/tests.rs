//! The store as a node uses it: a real one-voter Raft group on sled, closed and reopened.

use wharf_proto::{ApiError, NodeId, Principal, RepoId, RepoName};

use crate::{hash_token, Command, CommandOutcome, Meta, MetaConfig, RefUpdate};

async fn open(dir: &std::path::Path) -> Meta {
    let meta = Meta::open(dir, NodeId(1), "127.0.0.1:1".into(), MetaConfig::default(), None)
        .await
        .unwrap();
    meta.bootstrap_single().await.unwrap();
    meta
}

fn create(name: &str) -> Command {
    Command::CreateRepo {
        name: RepoName::parse(name).unwrap(),
        node: NodeId(1),
        now_ms: 1,
    }
}

#[tokio::test]
async fn writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let meta = open(dir.path()).await;
        let Ok(CommandOutcome::Repo(record)) = meta.write(create("acme/app")).await else {
            panic!("repository not created");
        };
        assert_eq!(record.id, RepoId(1));
        let duplicate = meta.write(create("acme/app")).await;
        assert!(matches!(duplicate, Err(crate::WriteError::Refused(ApiError::RepoExists { .. }))));
        let push = Command::RecordPush {
            push_id: "n1-s1".into(),
            repo: record.id,
            updates: vec![RefUpdate {
                ref_name: "refs/heads/main".into(),
                old: None,
                new: Some("a".repeat(40)),
            }],
            pusher: "ada".into(),
            now_ms: 2,
        };
        meta.write(push.clone()).await.unwrap();
        meta.write(push).await.unwrap();
        let token = Command::AddToken {
            token_hash: hash_token("t0ken"),
            principal: Principal {
                user: "ada".into(),
                admin: true,
            },
        };
        meta.write(token).await.unwrap();
        assert_eq!(meta.status().leader, Some(1));
        meta.shutdown().await.unwrap();
    }

    let meta = open(dir.path()).await;
    let directory = meta.directory();
    let name = RepoName::parse("acme/app").unwrap();
    assert_eq!(directory.repo(&name).unwrap().id, RepoId(1));
    assert_eq!(directory.push_events(RepoId(1), 0, 10).len(), 1);
    assert_eq!(directory.authenticate("t0ken").unwrap().user, "ada");
    let Ok(CommandOutcome::Repo(second)) = meta.write(create("acme/second")).await else {
        panic!("repository not created after restart");
    };
    assert_eq!(second.id, RepoId(2), "the id counter survives too");
    meta.shutdown().await.unwrap();
}

/// Carries Raft RPCs between stores in this process: real Raft, no sockets. A store missing
/// from the map is down.
#[derive(Clone, Default)]
struct LocalTransport {
    peers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Meta>>>,
}

impl crate::RaftTransport for LocalTransport {
    fn call(&self, target: u64, payload: Vec<u8>) -> crate::TransportFuture {
        let peer = self.peers.lock().unwrap().get(&target).cloned();
        Box::pin(async move {
            match peer {
                Some(meta) => Ok(meta.handle_rpc(&payload).await),
                None => Err(crate::TransportError::NotConnected(target)),
            }
        })
    }

    fn forward(&self, target: u64, payload: Vec<u8>) -> crate::TransportFuture {
        let peer = self.peers.lock().unwrap().get(&target).cloned();
        Box::pin(async move {
            match peer {
                Some(meta) => Ok(meta.handle_forwarded_write(&payload).await),
                None => Err(crate::TransportError::NotConnected(target)),
            }
        })
    }
}

#[tokio::test]
async fn three_members_replicate_and_survive_the_loss_of_the_leader() {
    use std::time::Duration;
    let transport = LocalTransport::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut metas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let meta = Meta::open(
            dir.path(),
            NodeId(id),
            format!("node-{id}"),
            MetaConfig::default(),
            Some(std::sync::Arc::new(transport.clone())),
        )
        .await
        .unwrap();
        transport.peers.lock().unwrap().insert(id, meta.clone());
        metas.push(meta);
    }
    metas[0].bootstrap_single().await.unwrap();
    metas[0].add_member(2, "node-2".into(), true).await.unwrap();
    metas[0].add_member(3, "node-3".into(), true).await.unwrap();
    assert_eq!(metas[0].status().voters, [1, 2, 3]);

    metas[0].write(create("acme/app")).await.unwrap();
    let name = RepoName::parse("acme/app").unwrap();
    for meta in &metas[1..] {
        meta.wait_for_state(Duration::from_secs(30), "the record replicates", |d| d.repo(&name).is_some())
            .await
            .unwrap();
    }
    // A follower's write goes through the leader.
    metas[1].write(create("acme/other")).await.unwrap();
    let other = RepoName::parse("acme/other").unwrap();
    metas[2]
        .wait_for_state(Duration::from_secs(30), "the forwarded write replicates", |d| d.repo(&other).is_some())
        .await
        .unwrap();

    // The leader goes away; the other two elect one of themselves and keep accepting writes.
    transport.peers.lock().unwrap().remove(&1);
    metas[0].shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        let leader = metas[1].status().leader;
        if let Some(leader) = leader.filter(|l| *l != 1) {
            break leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader = &metas[new_leader as usize - 1];
    leader.write(create("acme/after")).await.unwrap();
    for meta in &metas[1..] {
        meta.shutdown().await.unwrap();
    }
}

/// A member that joins after the log it missed was purged gets the leader's snapshot file,
/// streamed, installs it into its key spaces, and serves it after a restart.
#[tokio::test]
async fn a_late_member_installs_the_leaders_snapshot_and_keeps_it() {
    use std::time::Duration;
    let transport = LocalTransport::default();
    let config = MetaConfig {
        snapshot_every: 20,
        logs_kept_after_snapshot: 0,
        ..MetaConfig::default()
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let open_member = |i: usize| {
        let (dir, transport, config) = (dirs[i].path().to_owned(), transport.clone(), config.clone());
        async move {
            let id = i as u64 + 1;
            let meta = Meta::open(&dir, NodeId(id), format!("node-{id}"), config, Some(std::sync::Arc::new(transport.clone())))
                .await
                .unwrap();
            transport.peers.lock().unwrap().insert(id, meta.clone());
            meta
        }
    };
    let leader = open_member(0).await;
    leader.bootstrap_single().await.unwrap();
    for i in 0..60 {
        leader.write(create(&format!("acme/repo-{i:02}"))).await.unwrap();
    }
    let snapshot = dirs[0].path().join("snapshots/current.snap");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !snapshot.is_file() || leader.inner.raft.metrics().borrow().purged.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the leader cut no snapshot and purged no log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let late = open_member(1).await;
    leader.add_member(2, "node-2".into(), true).await.unwrap();
    let last = RepoName::parse("acme/repo-59").unwrap();
    late.wait_for_state(Duration::from_secs(30), "the snapshot installs", |d| d.repo(&last).is_some())
        .await
        .unwrap();
    assert_eq!(late.directory().repos().len(), 60);
    assert!(dirs[1].path().join("snapshots/current.snap").is_file(), "the installed snapshot is kept to serve others");
    leader.write(create("acme/after")).await.unwrap();
    let after = RepoName::parse("acme/after").unwrap();
    late.wait_for_state(Duration::from_secs(30), "a write after the snapshot replicates", |d| d.repo(&after).is_some())
        .await
        .unwrap();

    transport.peers.lock().unwrap().remove(&2);
    late.shutdown().await.unwrap();
    drop(late);
    let late = open_member(1).await;
    assert_eq!(late.directory().repos().len(), 61, "a restarted member serves its records from disk at once");
    late.shutdown().await.unwrap();
    leader.shutdown().await.unwrap();
}

/// A golden value: its file name, its bytes as encoded now, and a check that stored bytes
/// decode to the same value.
type Golden = (&'static str, Vec<u8>, Box<dyn Fn(&[u8]) -> bool>);

/// Values as this format writes them, one per kind of thing that crosses a process or lands
/// on disk. The checked-in `golden/*.bin` files hold their bytes: a change that alters the
/// encoding of a stored or sent value fails here, and must come with a new format version and
/// a migration. `WHARF_BLESS=1` writes the files for a new format.
fn golden_values() -> Vec<Golden> {
    use wharf_proto::codec::{decode, encode};
    fn entry<T>(name: &'static str, value: T) -> Golden
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + 'static,
    {
        let bytes = encode(&value).unwrap();
        (name, bytes, Box::new(move |stored| decode::<T>(stored).is_ok_and(|read| read == value)))
    }
    let event = wharf_proto::PushEvent {
        seq: 3,
        repo: RepoId(7),
        ref_name: "refs/heads/main".into(),
        old: None,
        new: Some("a".repeat(40)),
        pusher: "ada".into(),
        time_ms: 1_700_000_000_000,
    };
    vec![
        entry("command-create-repo", create("acme/app")),
        entry(
            "command-record-push",
            Command::RecordPush {
                push_id: "n1-s1".into(),
                repo: RepoId(7),
                updates: vec![RefUpdate {
                    ref_name: "refs/heads/main".into(),
                    old: Some("b".repeat(40)),
                    new: None,
                }],
                pusher: "ada".into(),
                now_ms: 5,
            },
        ),
        entry(
            "command-ci-create-pipeline",
            Command::Ci(crate::CiCommand::CreatePipeline {
                repo: RepoId(7),
                ref_name: "refs/heads/main".into(),
                sha: "c".repeat(40),
                jobs: vec![wharf_ci::PlannedJob {
                    name: "test".into(),
                    stage: "test".into(),
                    needs: vec!["build".into()],
                    retries: 1,
                }],
                error: None,
                now_ms: 6,
            }),
        ),
        entry(
            "command-deploy-create-environment",
            Command::Deploy(crate::DeployCommand::CreateEnvironment {
                repo: RepoId(7),
                name: "staging".into(),
                config: wharf_proto::deploy::EnvConfig::default(),
                protected: true,
                now_ms: 8,
            }),
        ),
        entry("record-push-event", event),
        entry(
            "record-repo",
            wharf_proto::RepoRecord {
                id: RepoId(7),
                name: RepoName::parse("acme/app").unwrap(),
                node: NodeId(2),
                created_ms: 9,
            },
        ),
        entry(
            "reply-error",
            Err::<CommandOutcome, ApiError>(ApiError::RepoExists { repo: "acme/app".into() }),
        ),
    ]
}

#[test]
fn golden_files_of_this_format_still_decode_to_the_same_values() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let bless = std::env::var_os("WHARF_BLESS").is_some();
    for (name, bytes, reads_back) in golden_values() {
        let path = dir.join(format!("{name}.bin"));
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (WHARF_BLESS=1 writes it)", path.display()));
        assert!(reads_back(&stored), "{name}: the checked-in bytes no longer decode to the same value");
        assert_eq!(stored, bytes, "{name}: this build encodes the value differently: a new format version is needed");
    }
}
