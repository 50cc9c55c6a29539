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
        let Ok(CommandOutcome::Repo(record)) = meta.write(create("acme/app")).await.unwrap() else {
            panic!("repository not created");
        };
        assert_eq!(record.id, RepoId(1));
        let duplicate = meta.write(create("acme/app")).await.unwrap();
        assert!(matches!(duplicate, Err(ApiError::RepoExists { .. })));
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
        meta.write(push.clone()).await.unwrap().unwrap();
        meta.write(push).await.unwrap().unwrap();
        let token = Command::AddToken {
            token_hash: hash_token("t0ken"),
            principal: Principal {
                user: "ada".into(),
                admin: true,
            },
        };
        meta.write(token).await.unwrap().unwrap();
        assert_eq!(meta.status().leader, Some(1));
        meta.shutdown().await.unwrap();
    }

    let meta = open(dir.path()).await;
    let directory = meta.directory();
    let name = RepoName::parse("acme/app").unwrap();
    assert_eq!(directory.repo(&name).unwrap().id, RepoId(1));
    assert_eq!(directory.push_events(RepoId(1), 0, 10).len(), 1);
    assert_eq!(directory.authenticate("t0ken").unwrap().user, "ada");
    let Ok(CommandOutcome::Repo(second)) = meta.write(create("acme/second")).await.unwrap() else {
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

    metas[0].write(create("acme/app")).await.unwrap().unwrap();
    let name = RepoName::parse("acme/app").unwrap();
    for meta in &metas[1..] {
        meta.wait_for_state(Duration::from_secs(30), "the record replicates", |d| d.repo(&name).is_some())
            .await
            .unwrap();
    }
    // A follower's write goes through the leader.
    metas[1].write(create("acme/other")).await.unwrap().unwrap();
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
    leader.write(create("acme/after")).await.unwrap().unwrap();
    for meta in &metas[1..] {
        meta.shutdown().await.unwrap();
    }
}
