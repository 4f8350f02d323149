//! One writer per checkpoint: a job that lost its lease to another process
//! stops before committing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use weir_engine::{JobOptions, LeaseOwner, StreamingJob, Trigger};
use weir_storage::lease::LeaseRecord;
use weir_storage::location::Create;
use weir_storage::{Checkpoint, Location};

const JOB: &str = "
CREATE TABLE src (v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
  WITH ('connector' = 'files', 'path' = '@IN@', 'format' = 'csv');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '@OUT@', 'format' = 'parquet');
INSERT INTO out SELECT v, ts FROM src;";

#[tokio::test]
async fn a_job_that_lost_its_lease_does_not_commit() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.csv"), "v,ts\n1,2026-01-01T00:00:01\n").unwrap();
    let sql = JOB
        .replace("@IN@", &input.display().to_string())
        .replace("@OUT@", &dir.path().join("out").display().to_string());
    let ckpt = dir.path().join("ck").display().to_string();
    let mut options = JobOptions::new(ckpt.clone());
    options.owner = LeaseOwner::this_process("host-a");
    options.lease_ttl = Duration::from_secs(60);
    let mut job = StreamingJob::open(&sql, options).await.unwrap();

    // Another process on another machine decided this one was dead and took
    // the lease (a newer generation).
    let ck = Checkpoint::new(Location::open(&ckpt, &Default::default(), Create::No).unwrap());
    let current = ck.current_lease().await.unwrap().unwrap();
    ck.create_lease(&LeaseRecord {
        generation: current.generation + 1,
        owner: "someone-else".into(),
        host: "host-b".into(),
        pid: 1,
        ..current
    })
    .await
    .unwrap();

    let (_tx, stop) = tokio::sync::watch::channel(false);
    let err = job
        .run(Trigger::AvailableNow, false, stop, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lost the lease"), "{err}");
    assert_eq!(ck.commits.latest().await.unwrap(), None, "nothing was committed");

    // And a third job is refused while host-b's lease is live.
    let mut options = JobOptions::new(ckpt);
    options.owner = LeaseOwner::this_process("host-c");
    let err = StreamingJob::open(&sql, options).await.err().unwrap().to_string();
    assert!(err.contains("in use by process 1 on host host-b"), "{err}");
}

/// Stalls the job it is given to (blocking its runtime, renewals and all,
/// as a stopped process is) when epoch 1's offsets entry is written; while
/// it stalls, another process takes the lapsed lease over and commits
/// epoch 1 (its lease and commit written here by hand: a second job of
/// this process would be refused), and epoch 1's input file goes away.
struct StallAtEpochOne {
    ckpt: String,
    input: std::path::PathBuf,
}

impl weir_engine::EpochHooks for StallAtEpochOne {
    fn reached(&self, step: weir_engine::Step, epoch: u64) -> weir_engine::Result<()> {
        if step != weir_engine::Step::OffsetsWritten || epoch != 1 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(700));
        let ckpt = self.ckpt.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let ck = Checkpoint::new(Location::open(&ckpt, &Default::default(), Create::No).unwrap());
                let current = ck.current_lease().await.unwrap().unwrap();
                ck.create_lease(&LeaseRecord {
                    generation: current.generation + 1,
                    owner: "someone-else".into(),
                    host: "host-b".into(),
                    pid: 1,
                    ..current
                })
                .await
                .unwrap();
            });
        })
        .join()
        .unwrap();
        let commit = std::path::Path::new(&self.ckpt).join("commits");
        std::fs::create_dir_all(&commit).unwrap();
        std::fs::write(
            commit.join("00000000000000000001.json"),
            r#"{"watermarks":{},"rows_in":1,"rows_out":1,"late_rows":0,"committed_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        std::fs::remove_file(self.input.join("a.csv")).unwrap();
        Ok(())
    }
}

/// A job that stalled past its lease, and whose epoch then fails (its
/// input file is gone), must not roll that epoch back: its replacement
/// committed it, and the rollback deleted that commit's offsets entry and
/// state, so no later run could restore.
#[tokio::test]
async fn a_stalled_job_does_not_roll_back_an_epoch_its_replacement_committed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.csv"), "v,ts\n1,2026-01-01T00:00:01\n").unwrap();
    let sql = JOB
        .replace("@IN@", &input.display().to_string())
        .replace("@OUT@", &dir.path().join("out").display().to_string());
    let ckpt = dir.path().join("ck").display().to_string();
    let mut options = JobOptions::new(ckpt.clone());
    options.owner = LeaseOwner::this_process("host-a");
    options.lease_ttl = Duration::from_millis(300);
    options.hooks = std::sync::Arc::new(StallAtEpochOne {
        ckpt: ckpt.clone(),
        input: input.clone(),
    });
    let mut job = StreamingJob::open(&sql, options).await.unwrap();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let err = job
        .run(Trigger::AvailableNow, false, stop, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lost the lease"), "{err}");
    let ck = Checkpoint::new(Location::open(&ckpt, &Default::default(), Create::No).unwrap());
    assert_eq!(ck.commits.latest().await.unwrap(), Some(1));
    assert!(
        std::path::Path::new(&ckpt)
            .join("offsets/00000000000000000001.json")
            .exists(),
        "epoch 1's offsets entry, which its commit needs, is kept"
    );
}
