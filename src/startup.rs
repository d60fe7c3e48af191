//! Building and running the application: the one place that wires settings,
//! pools, Redis and the HTTP server together, so that `main`, the tests and
//! the benchmarks all start the very same thing.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    auth::{Passwords, Tokens},
    catalog::CatalogCache,
    config::Settings,
    health::DependencyChecks,
    http, metrics,
    registration::{Registrar, Rules},
    rules::RuleBook,
    seats::{limits::Limiter, Redis},
    state::AppState,
    store,
    supervise::Supervisor,
    sync::{
        lease::{LeaseKeeper, Leases},
        sweeper::{Backlog, Sweeper},
        warmup, Persistence, Recovered, Workers,
    },
};

/// Pause between two warm-up attempts while Redis or PostgreSQL is away.
const WARMUP_RETRY: Duration = Duration::from_secs(1);

/// A bound, wired, not yet serving application.
pub struct Application {
    listener: TcpListener,
    /// `/metrics`, `/health` and the probes apart from the API, when
    /// `http.metrics_port` is set.
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    workers: Workers,
    sweeper: Sweeper,
    /// Warm-up loads every active section through it before `/ready`.
    loader: Arc<warmup::Loader>,
    /// Holds this instance's persistence leases (`sync::lease`).
    lease_keeper: LeaseKeeper,
    /// Which partitions those are: only their owner rebuilds their sections.
    leases: Leases,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Application {
    /// Binds the listener, builds the pools and applies migrations when
    /// configured. PostgreSQL being down is not fatal (the schema is assumed
    /// present and the hot path does not need it); a broken migration is.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = store::pool(&settings.database)?;
        let sync_db = store::persistence_pool(&settings.database)?;
        let read_db = store::read_pool(&settings.database, &db)?;
        if !settings.database.migrate_on_start {
            if let Err(e) = store::ping(&db).await {
                tracing::warn!(error = %format!("{e:#}"), database = %settings.database.url.redacted(), "PostgreSQL is not ready for this server");
            }
        }
        if settings.database.migrate_on_start {
            match db.get().await {
                Ok(mut client) => {
                    let applied = store::migrate::run(&mut client)
                        .await
                        .context("failed to apply migrations")?;
                    if !applied.is_empty() {
                        tracing::info!(?applied, "migrations applied");
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %crate::store::error_chain(&e),
                        database = %settings.database.url.redacted(),
                        "PostgreSQL unreachable at start; migrations skipped (check database.url, \
                         or start PostgreSQL: `bash scripts/services.sh`)"
                    )
                }
            }
        }
        let redis = Redis::new(&settings.redis)?.announcing(settings.live.enabled);
        let addr = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("failed to bind {addr} (http.host, http.port)"))?;
        let metrics_listener = match settings.http.metrics_port {
            Some(port) => {
                let addr = format!("{}:{port}", settings.http.metrics_host);
                let listener = TcpListener::bind(&addr).await.with_context(|| {
                    format!("failed to bind {addr} (http.metrics_host, http.metrics_port)")
                })?;
                Some(listener)
            }
            None => None,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let supervisor = Supervisor::new();
        let leases = Leases::new(settings.sync.partitions);
        let recovered = Recovered::new();
        let (persistence, workers) = Persistence::start(
            &settings.sync,
            sync_db.clone(),
            redis.clone(),
            stop_rx,
            &supervisor,
            &leases,
            &recovered,
        );
        let lease_keeper = LeaseKeeper::new(
            store::lease_pool(&settings.database)?,
            leases.clone(),
            &settings.redis.namespace,
            Duration::from_millis(settings.sync.lease_interval_ms),
            recovered,
        );
        let backlog = Arc::new(Backlog::default());
        let loader = Arc::new(warmup::Loader::new(
            sync_db.clone(),
            redis.clone(),
            settings.sync.load_timeout_ms.duration(),
        ));
        let sweeper = Sweeper {
            loader: loader.clone(),
            db: sync_db.clone(),
            redis: redis.clone(),
            persistence: persistence.clone(),
            leases: leases.clone(),
            settings: settings.sync.clone(),
            backlog: backlog.clone(),
        };
        let state = AppState {
            tokens: Tokens::new(
                settings.auth.jwt_secret.expose().as_bytes(),
                Duration::from_secs(settings.auth.token_ttl_secs),
            ),
            passwords: Passwords::new(settings.auth.max_concurrent_hashes)?,
            metrics: metrics::install(),
            live: Arc::new(crate::live::Hub::new(
                &settings.live,
                &settings.redis.namespace,
            )),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            warmed_up: AtomicBool::new(false),
            access_copied: AtomicBool::new(false),
            registrar: Registrar::new(
                redis.clone(),
                loader.clone(),
                persistence.clone(),
                settings.rules.enabled.then(|| Rules {
                    book: Arc::new(RuleBook::new(Duration::from_millis(
                        settings.rules.facts_ttl_ms,
                    ))),
                    db: db.clone(),
                    settings: settings.rules.clone(),
                    read_timeout: settings.sync.load_timeout_ms.duration(),
                }),
            ),
            supervisor,
            persistence,
            backlog,
            limiter: Limiter::new(&settings.rate_limit, &settings.redis.namespace),
            catalog_cache: CatalogCache::new(
                Duration::from_millis(settings.api.catalog_cache_ms),
                Duration::from_millis(settings.api.live_counts_cache_ms),
            ),
            dependency_checks: DependencyChecks::new(
                settings.http.health_cache_ms.duration(),
                settings.redis.response_timeout_ms.duration(),
                settings.database.connect_timeout_ms.duration(),
            ),
            db,
            read_db,
            sync_db,
            redis,
            settings,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state: Arc::new(state),
            workers,
            sweeper,
            loader,
            lease_keeper,
            leases,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The metrics listener's address, when `http.metrics_port` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, finishes
    /// in-flight requests, lets the shards drain into PostgreSQL (bounded by
    /// `sync.drain_timeout_ms`; the rest stays in the outbox) and closes the pools.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        match self.metrics_addr() {
            Some(metrics) => tracing::info!(addr = %self.local_addr(), %metrics, "listening"),
            None => tracing::info!(addr = %self.local_addr(), "listening"),
        }
        let warm = tokio::spawn(warm_up(self.state.clone(), self.loader.clone()));
        let supervisor = self.state.supervisor.clone();
        // The leases outlive the shards: they must still be held while the
        // shards drain at shutdown, so they have a stop signal of their own.
        let (release_leases, leases_stop) = tokio::sync::watch::channel(false);
        let leases = supervisor.spawn("lease-keeper", self.lease_keeper.run(leases_stop));
        let upkeep = supervisor.spawn(
            "metrics-upkeep",
            metrics::upkeep(self.state.metrics.clone()),
        );
        let sweeper = supervisor.spawn("sweeper", self.sweeper.run(self.stop.subscribe()));
        // Live updates: this instance hears every committed batch (src/live.rs).
        let live = self.state.settings.live.enabled.then(|| {
            supervisor.spawn(
                "live-subscription",
                self.state.live.clone().run(
                    self.state.settings.redis.clone(),
                    self.state.persistence.clone(),
                    self.leases.clone(),
                ),
            )
        });
        // Account changes made anywhere reach every server's Redis copy.
        let access = supervisor.spawn("access-listener", crate::access::listen(self.state.clone()));
        let ineligible = supervisor.spawn(
            "ineligible-sweeper",
            crate::access::sweep_ineligible(self.state.clone(), self.stop.subscribe()),
        );
        // Pauses registration after a possible Redis restart until Redis is
        // checked against PostgreSQL (src/sync/revalidate.rs).
        let revalidator = supervisor.spawn(
            "revalidator",
            crate::sync::revalidate::Revalidator {
                db: self.state.sync_db.clone(),
                redis: self.state.redis.clone(),
                persistence: self.state.persistence.clone(),
                leases: self.leases.clone(),
            }
            .run(self.stop.subscribe()),
        );
        // A background task that dies stops the process like a signal does
        // (src/supervise.rs), after the same graceful shutdown.
        let stop_when = async {
            tokio::select! {
                () = shutdown => {}
                task = supervisor.failure() => {
                    tracing::error!(%task, "shutting down: a background task stopped");
                }
            }
        };
        // Both listeners stop together, when shutdown begins.
        let (stop_http, http_stop) = tokio::sync::watch::channel(false);
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let begin_shutdown = async {
            stop_when.await;
            self.state.begin_shutdown();
            let _ = stop_http.send(true);
        };
        let public_limits = http::server::ConnectionLimits {
            total: self.state.settings.http.max_connections,
            per_address: Some(self.state.settings.http.max_connections_per_address),
        };
        let (public_serves, metrics) = match self.metrics_listener {
            Some(listener) => (
                http::router::Serves::Api,
                Some(http::server::serve(
                    listener,
                    self.state.clone(),
                    http::router::Serves::Metrics,
                    http::server::METRICS_LISTENER_LIMITS,
                    stopped(http_stop.clone()),
                )),
            ),
            None => (http::router::Serves::Everything, None),
        };
        let public = http::server::serve(
            self.listener,
            self.state.clone(),
            public_serves,
            public_limits,
            stopped(http_stop),
        );
        tokio::join!(begin_shutdown, public, async {
            if let Some(metrics) = metrics {
                metrics.await;
            }
        });
        supervisor.stopping();
        warm.abort();
        upkeep.abort();
        if let Some(live) = live {
            live.abort();
        }
        access.abort();
        let _ = self.stop.send(true);
        revalidator.abort();
        let deadline = Duration::from_millis(self.state.settings.sync.drain_timeout_ms);
        if self.workers.join(deadline).await {
            tracing::info!("persistence queues drained");
        } else {
            tracing::warn!(
                "drain deadline passed; the rest stays in the outbox for the next start"
            );
        }
        let _ = sweeper.await;
        let _ = ineligible.await;
        let _ = release_leases.send(true);
        let _ = leases.await;
        self.state.db.close();
        self.state.read_db.close();
        self.state.sync_db.close();
        if let Some(task) = supervisor.failed() {
            anyhow::bail!("stopped because background task `{task}` ended unexpectedly");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Loads the scripts and every active section Redis lacks, retrying until
/// both Redis and PostgreSQL answer; `/ready` turns 200 after.
async fn warm_up(state: Arc<AppState>, loader: Arc<warmup::Loader>) {
    // Not fatal: registration waits (503, /ready 503) until Redis answers;
    // said once, with the address and the fix.
    if let Err(e) = state.redis.ping().await {
        tracing::warn!(
            error = %e,
            redis = %state.redis.address(),
            "Redis unreachable at start; registration waits for it (check redis.url, \
             or start Redis: `bash scripts/services.sh`)"
        );
    }
    loop {
        let attempt = async {
            state.redis.load_scripts().await.with_context(|| {
                format!(
                    "loading the scripts into Redis at {} (redis.url)",
                    state.redis.address()
                )
            })?;
            let warmed = loader.warm_up().await?;
            state.registrar.prime_rules(&loader.known()).await;
            anyhow::Ok(warmed)
        };
        match attempt.await {
            Ok(warmed) => {
                // The first request of each student then finds their
                // access record in Redis (src/access.rs): no PostgreSQL
                // round trip on the hot path.
                while !state.is_access_copied() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tracing::info!(
                    loaded = warmed.loaded,
                    present = warmed.present,
                    blocked = warmed.blocked,
                    "warm-up done"
                );
                state.warm_up_done();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "warm-up failed; retrying");
                tokio::time::sleep(WARMUP_RETRY).await;
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
