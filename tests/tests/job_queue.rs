//! The worker's queue contract (`JobQueue`) on each backend: the embedded one, one Redis, and
//! a real local Redis Cluster. A job fetched by a worker that does not host its tool is released:
//! it is not failed, a worker hosting the tool takes it at its next reclaim (not before), and a
//! release by a worker that no longer owns the entry takes nothing from the worker that does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_core::backend::{CallPlane, JobQueue};
use switchboard_core::calls::{OwnerCaps, Reclaimed, Submission, Submitted, TraceContext};
use switchboard_core::clock::now_ms;
use switchboard_core::encoding::random_id;
use switchboard_core::tasks::new_task_id;
use switchboard_core::tools::ToolSpec;
use switchboard_harness::cluster::RedisCluster;
use switchboard_harness::{RedisServer, cluster_backend, redis_backend};
use switchboard_protocol::methods::tasks::TaskStatus;

/// The reclaimers' `min_idle`: far longer than the test takes, far shorter than a release's
/// idle time, so only a released entry qualifies.
const VISIBILITY: Duration = Duration::from_secs(60);
/// How long a fetch waits for a job that was queued before it.
const FETCH_BLOCK: Duration = Duration::from_secs(2);

fn submission(tool: &ToolSpec, arguments: serde_json::Value) -> Submission {
    // A hash of its own (no cache, no coalescing between the tests' calls).
    let call_hash = format!("{}{}", random_id(), random_id());
    Submission {
        tool: tool.clone(),
        queue: tool.queue_id(),
        arguments,
        task_id: new_task_id(&call_hash),
        call_hash,
        alias: None,
        owner: "alice".into(),
        identity: "alice".into(),
        read_cache: false,
        cache_ttl_ms: 0,
        task_ttl_ms: 60_000,
        poll_interval_ms: 100,
        deadline_ms: now_ms() + 60_000,
        caps: OwnerCaps::default(),
        max_result_bytes: 1024,
        trace: TraceContext::default(),
    }
}

fn tool() -> ToolSpec {
    serde_json::from_value(json!({
        "name": "released", "inputSchema": {"type": "object"}, "timeoutMs": 10_000,
    }))
    .unwrap()
}

/// Queues one call and has worker `w-a` fetch it; returns the job.
async fn fetched<B: CallPlane + JobQueue>(b: &B, tool: &ToolSpec) -> switchboard_core::calls::Job {
    let queue = tool.queue_id();
    JobQueue::prepare(b, std::slice::from_ref(&queue))
        .await
        .unwrap();
    let s = submission(tool, json!({"n": 1}));
    assert!(
        matches!(b.submit(&s).await.unwrap(), Submitted::Leader(_)),
        "a new call leads"
    );
    let jobs = b.fetch("w-a", &[queue], 10, FETCH_BLOCK).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].task_id, s.task_id);
    jobs.into_iter().next().unwrap()
}

/// Redis (single or cluster): released, the entry is reclaimed by a hosting worker, counted as
/// one more delivery; the caller's task still works; a stale release takes nothing back.
async fn release_then_reclaim(b: Arc<switchboard_redis::RedisBackend>) {
    let tool = tool();
    let queue = tool.queue_id();
    let job = fetched(&*b, &tool).await;
    let reclaim = |w: &'static str| {
        let b = b.clone();
        let queue = queue.clone();
        async move { b.reclaim(w, &[queue], VISIBILITY, 5, 10).await.unwrap() }
    };

    assert!(
        reclaim("w-b").await.is_empty(),
        "a fetched job is its worker's until released"
    );
    b.release("w-a", &job).await.unwrap();
    let taken = reclaim("w-b").await;
    let [Reclaimed::Run(again)] = taken.as_slice() else {
        panic!("the released job is taken by the next reclaim: {taken:?}");
    };
    assert_eq!(again.task_id, job.task_id);
    assert_eq!(again.entry_id, job.entry_id);
    assert_eq!(again.deliveries, 2, "the release itself counts no delivery");
    let task = b
        .task(&job.task_id)
        .await
        .unwrap()
        .expect("the task is kept");
    assert_eq!(
        task.status,
        TaskStatus::Working,
        "a released job is not failed"
    );

    // w-a's release, late: the entry is w-b's now, and stays so.
    b.release("w-a", &job).await.unwrap();
    assert!(b.extend("w-b", again).await.unwrap(), "w-b still owns it");
    assert!(!b.extend("w-a", &job).await.unwrap());
    assert!(
        reclaim("w-c").await.is_empty(),
        "a stale release leaves the entry busy"
    );
}

#[tokio::test]
async fn a_released_job_goes_back_to_its_queue_on_the_embedded_backend() {
    let b = switchboard_memory::MemoryBackend::new();
    let tool = tool();
    let job = fetched(&*b, &tool).await;
    let queue = [tool.queue_id()];
    assert!(
        b.fetch("w-b", &queue, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "a fetched job has left the queue"
    );
    b.release("w-a", &job).await.unwrap();
    let again = b.fetch("w-b", &queue, 10, FETCH_BLOCK).await.unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].task_id, job.task_id);
    let task = b
        .task(&job.task_id)
        .await
        .unwrap()
        .expect("the task is kept");
    assert_eq!(task.status, TaskStatus::Working);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_job_is_reclaimed_by_a_hosting_worker_on_redis() {
    let redis = RedisServer::start().await;
    release_then_reclaim(redis_backend(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_job_is_reclaimed_by_a_hosting_worker_on_the_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    release_then_reclaim(cluster_backend(&cluster)).await;
}
