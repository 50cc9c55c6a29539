//! The store as a node uses it: a real one-voter Raft group on sled, closed and reopened.

use wharf_proto::{ApiError, NodeId, Principal, RepoId, RepoName};

use crate::{hash_token, Command, CommandOutcome, Meta, MetaConfig, RefUpdate};

async fn open(dir: &std::path::Path) -> Meta {
    let meta = Meta::open(dir, NodeId(1), "127.0.0.1:1".into(), MetaConfig::default())
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
            repo: record.id,
            updates: vec![RefUpdate {
                ref_name: "refs/heads/main".into(),
                old: None,
                new: Some("a".repeat(40)),
            }],
            pusher: "ada".into(),
            now_ms: 2,
        };
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
