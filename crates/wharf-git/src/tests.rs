//! Tests of the repository operations on real bare repositories in temporary directories.

use wharf_proto::{ApiError, ChangeKind, CommitFilesRequest, FileAction, FileActionKind, MergeRequest, MergeStrategy};

use crate::GitRepo;

fn new_repo() -> (tempfile::TempDir, GitRepo) {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("r.git"), "acme/app").unwrap();
    (dir, repo)
}

fn put(path: &str, content: &str) -> FileAction {
    FileAction {
        action: FileActionKind::Create,
        path: path.into(),
        content: content.as_bytes().to_vec(),
        executable: false,
    }
}

fn commit(repo: &GitRepo, branch: &str, actions: Vec<FileAction>) -> Result<String, ApiError> {
    repo.commit_files(&CommitFilesRequest {
        branch: branch.into(),
        start_branch: None,
        expected_parent: None,
        message: format!("change {branch}"),
        author_name: "Ada".into(),
        author_email: "ada@example.com".into(),
        actions,
    })
    .map(|detail| detail.commit.id)
}

fn update(path: &str, content: &str) -> FileAction {
    FileAction {
        action: FileActionKind::Update,
        ..put(path, content)
    }
}

#[test]
fn empty_repository_has_no_branches_and_unknown_head() {
    let (_dir, repo) = new_repo();
    let summary = repo.summary().unwrap();
    assert!(summary.empty);
    assert_eq!(summary.default_branch, None);
    assert!(matches!(repo.tree(None, "", 0, 100), Err(ApiError::RevisionNotFound { .. })));
}

#[test]
fn commit_files_then_read_tree_blob_and_log() {
    let (_dir, repo) = new_repo();
    let first = commit(&repo, "main", vec![put("README.md", "hello\n"), put("src/lib.rs", "fn a() {}\n")]).unwrap();
    let second = commit(&repo, "main", vec![update("src/lib.rs", "fn a() {}\nfn b() {}\n")]).unwrap();

    let root = repo.tree(None, "", 0, 100).unwrap();
    let names: Vec<_> = root.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["src", "README.md"], "directories come first");
    assert_eq!(root.entries[1].size, Some(6));

    let blob = repo.blob(Some("main"), "src/lib.rs").unwrap();
    assert_eq!(blob.content, b"fn a() {}\nfn b() {}\n");
    assert!(!blob.binary);

    let detail = repo.commit_detail(&second).unwrap();
    assert_eq!(detail.commit.parents, std::slice::from_ref(&first));
    assert_eq!(detail.files.len(), 1);
    assert_eq!((detail.files[0].change, detail.additions, detail.deletions), (ChangeKind::Modified, 1, 0));

    let page = repo.log(None, None, 1, None).unwrap();
    assert_eq!(page.commits[0].id, second);
    let next = repo.log(None, None, 1, page.next_cursor.as_deref()).unwrap();
    assert_eq!(next.commits[0].id, first);
    assert_eq!(next.next_cursor, None);

    let readme_history = repo.log(None, Some("README.md"), 10, None).unwrap();
    assert_eq!(readme_history.commits.len(), 1, "only the first commit touches README.md");
    assert!(matches!(repo.blob(None, "missing.txt"), Err(ApiError::PathNotFound { .. })));
    assert!(matches!(repo.blob(None, "../etc/passwd"), Err(ApiError::InvalidRequest { .. })));
}

#[test]
fn stale_parent_and_conflicting_actions_are_refused() {
    let (_dir, repo) = new_repo();
    let first = commit(&repo, "main", vec![put("a.txt", "a\n")]).unwrap();
    commit(&repo, "main", vec![update("a.txt", "b\n")]).unwrap();
    let stale = repo.commit_files(&CommitFilesRequest {
        branch: "main".into(),
        start_branch: None,
        expected_parent: Some(first),
        message: "late".into(),
        author_name: "Ada".into(),
        author_email: "ada@example.com".into(),
        actions: vec![update("a.txt", "c\n")],
    });
    assert!(matches!(stale, Err(ApiError::StaleParent { .. })));
    assert!(matches!(commit(&repo, "main", vec![put("a.txt", "x")]), Err(ApiError::FileConflict { .. })));
    assert_eq!(repo.blob(None, "a.txt").unwrap().content, b"b\n", "refused writes change nothing");
}

#[test]
fn branches_are_created_once_and_default_cannot_be_deleted() {
    let (_dir, repo) = new_repo();
    commit(&repo, "main", vec![put("a.txt", "a\n")]).unwrap();
    let branch = repo.create_branch("feature/x", None).unwrap();
    assert!(!branch.default);
    assert!(matches!(repo.create_branch("feature/x", None), Err(ApiError::RefExists { .. })));
    assert!(matches!(repo.create_branch("bad..name", None), Err(ApiError::InvalidName { .. })));
    assert!(matches!(repo.create_branch("y", Some("nope")), Err(ApiError::RevisionNotFound { .. })));
    assert!(repo.delete_branch("main").is_err());
    repo.delete_branch("feature/x").unwrap();
    assert_eq!(repo.branches().unwrap().len(), 1);
}

fn merge(repo: &GitRepo, head: &str, strategy: MergeStrategy) -> Result<String, ApiError> {
    repo.merge(&MergeRequest {
        base: "main".into(),
        head: head.into(),
        strategy,
        message: None,
        author_name: "Ada".into(),
        author_email: "ada@example.com".into(),
    })
    .map(|outcome| outcome.commit)
}

#[test]
fn merge_strategies_and_conflicts() {
    let (_dir, repo) = new_repo();
    let base = commit(&repo, "main", vec![put("a.txt", "1\n2\n3\n")]).unwrap();
    repo.create_branch("ff", None).unwrap();
    let ff_tip = commit(&repo, "ff", vec![put("ff.txt", "ff\n")]).unwrap();
    assert_eq!(merge(&repo, "ff", MergeStrategy::FastForward).unwrap(), ff_tip);

    repo.create_branch("side", Some(&base)).unwrap();
    commit(&repo, "side", vec![put("side.txt", "side\n")]).unwrap();
    assert!(matches!(merge(&repo, "side", MergeStrategy::FastForward), Err(ApiError::NotFastForward { .. })));
    let merged = merge(&repo, "side", MergeStrategy::Merge).unwrap();
    assert_eq!(repo.commit_detail(&merged).unwrap().commit.parents.len(), 2);

    repo.create_branch("squashme", None).unwrap();
    commit(&repo, "squashme", vec![put("s.txt", "s\n")]).unwrap();
    let squashed = merge(&repo, "squashme", MergeStrategy::Squash).unwrap();
    assert_eq!(repo.commit_detail(&squashed).unwrap().commit.parents, [merged]);
    assert_eq!(repo.blob(None, "s.txt").unwrap().content, b"s\n");

    repo.create_branch("clash", None).unwrap();
    commit(&repo, "clash", vec![update("a.txt", "1\nclash\n3\n")]).unwrap();
    commit(&repo, "main", vec![update("a.txt", "1\nmain\n3\n")]).unwrap();
    let tip_before = repo.branches().unwrap().into_iter().find(|b| b.name == "main").unwrap().commit;
    match merge(&repo, "clash", MergeStrategy::Merge) {
        Err(ApiError::MergeConflict { paths, .. }) => assert_eq!(paths, ["a.txt"]),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let tip_after = repo.branches().unwrap().into_iter().find(|b| b.name == "main").unwrap().commit;
    assert_eq!(tip_before, tip_after, "a conflicting merge changes nothing");

    let compare = repo.compare("main", "clash").unwrap();
    assert_eq!(compare.ahead_by, 1);
    assert_eq!(compare.files.len(), 1);
}

/// Names git cannot store, or that hide `.git` or pass for another name, are refused with a
/// 400-class error, not a 500 from the ref store (issue 14).
#[test]
fn names_git_refuses_or_that_disguise_themselves_are_invalid() {
    let (_dir, repo) = new_repo();
    commit(&repo, "main", vec![put("a.txt", "a\n")]).unwrap();
    for name in [
        "a.lock/b",
        "a/b.lock",
        "x.lock",
        "a/.hidden",
        "a//b",
        "a b",
        "a~1",
        "@",
        "HEAD",
        "-x",
        "a@{1}",
        "ma\u{202E}in",
        "ma\u{200B}in",
        "ma\u{2066}in",
        "\u{FEFF}main",
    ] {
        let created = repo.create_branch(name, None);
        assert!(matches!(created, Err(ApiError::InvalidName { .. })), "{name:?}: {created:?}");
        let committed = commit(&repo, name, vec![put("b.txt", "b\n")]);
        assert!(matches!(committed, Err(ApiError::InvalidName { .. })), "{name:?}: {committed:?}");
    }
    for name in ["feature/x", "release-1.2", "ünïcode", "a.b/c_d"] {
        repo.create_branch(name, None).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    for path in [
        ".git/config",
        ".GIT/config",
        ".git\u{200C}/config",
        ".g\u{200D}it/hooks/x",
        "GIT~1/config",
        "git~1/config",
        ".git./x",
        ".git /x",
        ".git::$INDEX_ALLOCATION/x",
        "a/../b",
        "a//b",
        "a/./b",
        "/abs",
        "x/",
        "evil\u{202E}txt.exe",
        "zero\u{200B}width",
    ] {
        let committed = commit(&repo, "main", vec![put(path, "x\n")]);
        assert!(matches!(committed, Err(ApiError::InvalidRequest { .. })), "{path:?}: {committed:?}");
    }
    assert!(matches!(repo.blob(Some("main"), "GIT~1/config"), Err(ApiError::InvalidRequest { .. })));
    commit(&repo, "main", vec![put("aux.c", "x\n"), put("dir/.gitignore", "x\n"), put("ünï/côde.txt", "x\n")]).unwrap();
}
