//! What tests of the registrar binary as a child process start from: a
//! migrated, seeded database and a Redis namespace of their own. The child
//! processes themselves are the kit's (`kit::child`).

use std::time::Duration;

use registrar::{
    auth::Tokens,
    config::{Millis, RedisSettings, Secret},
    seats::Redis,
    seed, store,
};
use uuid::Uuid;

use crate::{
    helpers::{create_database, redis_url, student_ids, test_settings},
    kit::{child::Launch, database::Database, namespace::Namespace},
};

/// A migrated, seeded database for child servers, and their namespace
/// (its keys removed when this is dropped, after the servers it outlives).
pub struct Seeded {
    pub database: Database,
    pub namespace: Namespace,
    pub db: deadpool_postgres::Pool,
    pub tokens: Tokens,
    pub sections: Vec<Uuid>,
    pub students: Vec<Uuid>,
    /// The seeded admin account (a token must name a real account).
    pub admin: Uuid,
}

impl Seeded {
    /// A server on this database and namespace, with the test configuration
    /// and the shared test Redis.
    pub fn launch(&self) -> Launch {
        self.launch_on(&redis_url())
    }

    /// [`Seeded::launch`] on the Redis at `redis_url` (a private one).
    pub fn launch_on(&self, redis_url: &str) -> Launch {
        Launch::new("test", &self.database.url, redis_url, &self.namespace.name)
    }

    /// A handle on the servers' namespace in the shared test Redis, to look
    /// at what they did.
    pub fn redis(&self) -> Redis {
        self.redis_on(&redis_url())
    }

    /// [`Seeded::redis`] on the Redis at `redis_url`.
    pub fn redis_on(&self, redis_url: &str) -> Redis {
        Redis::new(&RedisSettings {
            url: Secret::new(redis_url),
            namespace: self.namespace.name.clone(),
            connect_timeout_ms: Millis::new(1000),
            response_timeout_ms: Millis::new(1000),
            wait_replicas: 0,
            wait_timeout_ms: Millis::new(500),
        })
        .expect("a valid Redis URL")
    }
}

pub async fn seeded(students: usize, sections: usize, seats: i32, waitlist: i32) -> Seeded {
    let database = create_database().await;
    let settings = test_settings(&database.url);
    let db = store::pool(&settings.database).unwrap();
    store::migrate::run(&mut db.get().await.unwrap())
        .await
        .unwrap();
    let report = seed::seed(
        &db,
        &seed::SeedOptions {
            students,
            courses: sections,
            sections_per_course: 1,
            seats,
            waitlist,
            password: "unused-password".into(),
            admin_password: "unused-password".into(),
        },
        |_, _| {},
    )
    .await
    .unwrap();
    let admin = db
        .get()
        .await
        .unwrap()
        .query_one("select id from students where role = 'admin'", &[])
        .await
        .unwrap()
        .get(0);
    Seeded {
        admin,
        students: student_ids(&db).await,
        namespace: Namespace::named(
            settings.redis.namespace.clone(),
            settings.redis.url.expose(),
        ),
        tokens: Tokens::new(
            settings.auth.jwt_secret.expose().as_bytes(),
            Duration::from_secs(3600),
        ),
        database,
        db,
        sections: report.section_ids,
    }
}
