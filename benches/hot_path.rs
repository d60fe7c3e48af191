//! Micro-benchmarks of what one `POST /api/v1/register` costs besides the
//! network, and of the two ways of reaching Redis.
//!
//! Run with `cargo bench --bench hot_path`; `REDIS_URL` points the Redis
//! group at another server (default `redis://127.0.0.1:6379`).
//!
//! Every request pays, in this order:
//!
//! - `token_verify`: checking the HS256 bearer token (`auth::Tokens::verify`),
//!   the per-request authentication cost (HMAC-SHA256 plus JSON claims).
//! - `parse_register_body`: decoding the JSON body through
//!   `http::body::decode` into the handler's own `RegisterRequest` (two
//!   section ids and an idempotency key, unknown fields denied), the
//!   request-parsing cost.
//! - `fingerprint`: the SHA-256 idempotency fingerprint over the route, the
//!   student and the canonical section list, exactly as the handler builds it.
//! - `key_building`: formatting the eight Redis key names of one section
//!   (`seats::keys::SectionKeys::new`), paid once per section per call.
//! - `result_encoding`: serialising the `{"results": [...]}` answer for 1 and
//!   10 sections, the response-encoding cost.
//! - `redis_call`: one tiny EVALSHA round trip (the shape of `reserve.lua`
//!   without its logic), made by 50 concurrent tasks, through (a) one shared
//!   multiplexed connection, (b) the service's own handle
//!   (`seats::Redis::conn()`, a reconnecting `ConnectionManager`), and (c) a
//!   bb8 pool with a checkout per call, as the service's bulk pool does. The
//!   time per element is wall time per call under that concurrency, so it
//!   is the inverse of the throughput each way reaches; it backs the choice
//!   of a multiplexed connection for the hot path (SPEC §12). Skipped, with a
//!   note, when no Redis answers.
//!
//! The CPU groups bound how much of a request's latency is ours rather than
//! Redis's; comparing them with `redis_call` shows where a millisecond goes.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use bb8_redis::RedisConnectionManager;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redis::{aio::ConnectionLike, RedisError, RedisResult, Script};
use registrar::{
    auth::Tokens,
    config::{RedisSettings, Secret},
    domain::Role,
    http::{
        body, idempotency,
        registration::{RegisterRequest, SectionResult},
    },
    seats::{keys::SectionKeys, Redis},
};
use serde::Serialize;
use tokio::runtime::Runtime;
use uuid::Uuid;

const SECTION_A: Uuid = Uuid::from_u128(0x0190_7c1e_4b2a_7d3e_9f00_0000_0000_0001);
const SECTION_B: Uuid = Uuid::from_u128(0x0190_7c1e_4b2a_7d3e_9f00_0000_0000_0002);
const STUDENT: Uuid = Uuid::from_u128(0x0190_7c1e_4b2a_7d3e_9f00_0000_0000_00aa);

// ---------------------------------------------------------------------------
// CPU-side costs of a registration
// ---------------------------------------------------------------------------

/// Mirrors the handler's private `RegisterResponse`.
#[derive(Serialize)]
struct RegisterResponse {
    results: Vec<SectionResult>,
}

fn parse_register_body(c: &mut Criterion) {
    let body =
        format!(r#"{{"section_ids":["{SECTION_A}","{SECTION_B}"],"idempotency_key":"k-123"}}"#);
    let bytes = body.as_bytes();
    assert!(
        body::decode::<RegisterRequest>(bytes).is_ok(),
        "the benchmark body must decode"
    );
    let mut group = c.benchmark_group("parse_register_body");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("two_sections_with_key", |b| {
        b.iter(|| body::decode::<RegisterRequest>(black_box(bytes)))
    });
    group.finish();
}

fn token_verify(c: &mut Criterion) {
    let tokens = Tokens::new(
        b"bench-secret-bench-secret-bench!!",
        Duration::from_secs(900),
    );
    let token = tokens.mint(STUDENT, Role::Student, true);
    assert!(
        tokens.verify(&token).is_ok(),
        "the benchmark token must verify"
    );
    c.bench_function("token_verify", |b| {
        b.iter(|| tokens.verify(black_box(&token)))
    });
}

/// The handler's `canonical_ids`: the ids' bytes in request order.
fn canonical_ids(sections: &[Uuid]) -> Vec<u8> {
    sections.iter().flat_map(|s| *s.as_bytes()).collect()
}

fn fingerprint(c: &mut Criterion) {
    let sections = [SECTION_A, SECTION_B];
    c.bench_function("fingerprint", |b| {
        b.iter(|| {
            let student = black_box(STUDENT);
            idempotency::fingerprint(&[
                b"POST /api/v1/register",
                student.as_bytes(),
                &canonical_ids(black_box(&sections)),
            ])
        })
    });
}

fn key_building(c: &mut Criterion) {
    c.bench_function("key_building", |b| {
        b.iter(|| SectionKeys::new(black_box("reg"), black_box(SECTION_A)))
    });
}

/// `n` results with the mix of a busy minute: enrolled, waitlisted, full.
fn results(n: usize) -> RegisterResponse {
    let results = (0..n)
        .map(|i| {
            let section_id = Uuid::from_u128(SECTION_A.as_u128() + i as u128);
            match i % 3 {
                0 => SectionResult {
                    section_id,
                    status: "enrolled",
                    waitlist_position: None,
                    reason: None,
                    hold: None,
                    rule: Default::default(),
                },
                1 => SectionResult {
                    section_id,
                    status: "waitlisted",
                    waitlist_position: Some(i as i64 + 1),
                    reason: None,
                    hold: None,
                    rule: Default::default(),
                },
                _ => SectionResult {
                    section_id,
                    status: "rejected",
                    waitlist_position: None,
                    reason: Some("full"),
                    hold: None,
                    rule: Default::default(),
                },
            }
        })
        .collect();
    RegisterResponse { results }
}

fn result_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("result_encoding");
    for n in [1, 10] {
        let response = results(n);
        group.bench_with_input(BenchmarkId::new("sections", n), &response, |b, r| {
            b.iter(|| serde_json::to_vec(black_box(r)))
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Redis: shared multiplexed connection vs pool checkout per call
// ---------------------------------------------------------------------------

/// Concurrent callers, as during the opening minute.
const TASKS: usize = 50;
/// All calls hit one key, like a race for one section; removed at the end.
const BENCH_KEY: &str = "bench:{s:hot_path}:n";
const INCR: &str = "return redis.call('INCR', KEYS[1])";

/// How a call gets its connection.
#[derive(Clone)]
enum Access {
    /// A clone of one multiplexed connection per call (clones share the socket).
    Multiplexed(redis::aio::MultiplexedConnection),
    /// The service's handle: `Redis::conn()` per call, as the handlers do.
    Service(Redis),
    /// A connection checked out of a bb8 pool per call.
    Pool(bb8::Pool<RedisConnectionManager>),
}

impl Access {
    async fn call(&self, script: &Script) -> RedisResult<i64> {
        match self {
            Access::Multiplexed(conn) => invoke(script, &mut conn.clone()).await,
            Access::Service(redis) => invoke(script, &mut redis.conn()).await,
            Access::Pool(pool) => {
                let mut conn = pool.get().await.map_err(pool_error)?;
                invoke(script, &mut *conn).await
            }
        }
    }
}

async fn invoke<C: ConnectionLike + Send>(script: &Script, conn: &mut C) -> RedisResult<i64> {
    script.key(BENCH_KEY).invoke_async(conn).await
}

fn pool_error(e: bb8::RunError<RedisError>) -> RedisError {
    match e {
        bb8::RunError::User(e) => e,
        bb8::RunError::TimedOut => RedisError::from((
            redis::ErrorKind::Io,
            "timed out waiting for a pooled connection",
        )),
    }
}

/// Makes `iters` calls spread over [`TASKS`] concurrent tasks; the wall time.
async fn concurrent_calls(access: &Access, script: &Arc<Script>, iters: u64) -> Duration {
    let tasks = TASKS as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let calls = iters / tasks + u64::from(t < iters % tasks);
            let (access, script) = (access.clone(), Arc::clone(script));
            tokio::spawn(async move {
                for _ in 0..calls {
                    access.call(&script).await?;
                }
                Ok::<_, RedisError>(())
            })
        })
        .collect();
    for handle in handles {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("a Redis call failed during the benchmark: {e}"),
            Err(e) => panic!("a benchmark task failed: {e}"),
        }
    }
    start.elapsed()
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The ways to compare, or why Redis cannot be used.
async fn connect(url: &str) -> anyhow::Result<Vec<(&'static str, Access)>> {
    let client = redis::Client::open(url)?;
    let mut multiplexed = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    redis::cmd("PING")
        .query_async::<()>(&mut multiplexed)
        .await?;
    let service = Redis::new(&RedisSettings {
        url: Secret::new(url),
        namespace: "bench".into(),
        connect_timeout_ms: registrar::config::Millis::new(2_000),
        response_timeout_ms: registrar::config::Millis::new(2_000),
        wait_replicas: 0,
        wait_timeout_ms: registrar::config::Millis::new(500),
    })?;
    let mut ways = vec![
        ("multiplexed", Access::Multiplexed(multiplexed)),
        ("service_connection_manager", Access::Service(service)),
    ];
    // bb8's default size, and one connection per task (the pool's best case).
    for (name, size) in [("bb8_pool_10", 10), ("bb8_pool_50", TASKS as u32)] {
        let pool = bb8::Pool::builder()
            .max_size(size)
            .connection_timeout(Duration::from_secs(5))
            .build(RedisConnectionManager::new(url)?)
            .await?;
        ways.push((name, Access::Pool(pool)));
    }
    Ok(ways)
}

async fn delete_bench_key(url: &str) -> RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL")
        .arg(BENCH_KEY)
        .query_async(&mut conn)
        .await
}

fn redis_call(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return eprintln!("redis_call skipped: no Tokio runtime: {e}"),
    };
    let url = redis_url();
    let ways = match runtime.block_on(connect(&url)) {
        Ok(ways) => ways,
        Err(e) => return eprintln!("redis_call skipped: no Redis at {url}: {e:#}"),
    };
    let script = Arc::new(Script::new(INCR));
    let mut group = c.benchmark_group("redis_call");
    group.throughput(Throughput::Elements(1));
    for (name, access) in &ways {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| measure(&runtime, access, &script, iters))
        });
    }
    group.finish();
    if let Err(e) = runtime.block_on(delete_bench_key(&url)) {
        eprintln!("redis_call: could not delete {BENCH_KEY}: {e}");
    }
}

fn measure(runtime: &Runtime, access: &Access, script: &Arc<Script>, iters: u64) -> Duration {
    runtime.block_on(concurrent_calls(access, script, iters))
}

// ---------------------------------------------------------------------------

/// Short runs: the whole file finishes in about two minutes.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = parse_register_body, token_verify, fingerprint, key_building,
        result_encoding, redis_call
}
criterion_main!(hot_path);
