//! The command line: one binary with `serve`, `migrate`, `seed`, `token`,
//! `reconcile` and `semester detach`. `main.rs` parses and dispatches; the bodies live here.

use std::{io::Write, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::{
    auth::Tokens,
    config::Settings,
    seats::Redis,
    seed::{self, SeedOptions},
    startup::{shutdown_signal, Application},
    store,
    sync::{archive, reconcile},
    telemetry,
};

/// The version and the commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("REGISTRAR_GIT_SHA"),
    ")"
);

const CONFIGURATION_HELP: &str = "\
Configuration, later layers winning:
  1. the defaults built into the binary (config/default.toml of its source);
  2. <dir>/default.toml and <dir>/<APP_ENV>.toml where they exist, <dir> being
     APP_CONFIG_DIR (default: ./config) and APP_ENV local (default), test or
     production;
  3. environment variables APP__<SECTION>__<KEY>, e.g. APP__HTTP__PORT=8080,
     APP__DATABASE__URL=postgres://..., APP__REDIS__URL=redis://...,
     APP__RULES__ENABLED=false.
`registrar config check` validates the result, `registrar config print` shows
it (secrets redacted).";

#[derive(Parser)]
#[command(
    name = "registrar",
    version = VERSION,
    about = "Course registration engine",
    after_help = CONFIGURATION_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP API until SIGTERM or SIGINT.
    Serve,
    /// Apply pending SQL migrations (a no-op when up to date).
    Migrate,
    /// Load demo data: an open semester, courses, sections, students, one admin.
    Seed {
        /// Number of students (S0000001, S0000002, ...).
        #[arg(long, default_value_t = 1000)]
        students: usize,
        /// Number of courses (DEMO101, DEMO102, ...).
        #[arg(long, default_value_t = 10)]
        courses: usize,
        /// Sections of each course (001, 002, ...).
        #[arg(long, default_value_t = 2)]
        sections_per_course: usize,
        /// Seats per section.
        #[arg(long, default_value_t = 30)]
        seats: i32,
        /// Waitlist places per section.
        #[arg(long, default_value_t = 10)]
        waitlist: i32,
        /// Password of every demo student.
        #[arg(long, default_value = "password123")]
        password: String,
        /// Password of the `admin` account.
        #[arg(long, default_value = "admin-password")]
        admin_password: String,
        /// Also put the registrar's rules on the demo (credit limit,
        /// meetings, prerequisites, a corequisite, priority groups, a hold;
        /// README "Registration rules") and print the sections' ids as
        /// shell variables (S101_1=... for DEMO101-001, STUDENT1=... for
        /// S0000001).
        #[arg(long)]
        with_rules: bool,
    },
    /// Compare Redis with PostgreSQL per section, each at a consistent point
    /// (outbox empty, same sequence on both sides), and print any drift;
    /// sections that never stood still are printed as pending, not drift.
    /// Exit 1 when drift remains. With --fix, rebuild drifted sections'
    /// Redis state from PostgreSQL, each only if it is still at the point
    /// compared (safe under traffic).
    Reconcile {
        /// Rebuild each drifted section's Redis state from PostgreSQL.
        #[arg(long)]
        fix: bool,
    },
    /// Semester partitions: `semester detach <id>` archives an old semester.
    Semester {
        #[command(subcommand)]
        command: SemesterCommand,
    },
    /// The settings: `config check` validates them, `config print` shows
    /// the effective values (secrets redacted).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a JWT for a student (by number or id) or for the admin.
    Token {
        /// The student's number, e.g. S0000001.
        #[arg(long, conflicts_with_all = ["student_id", "admin"])]
        student_number: Option<String>,
        /// The student's id (a UUID).
        #[arg(long, conflicts_with = "admin")]
        student_id: Option<Uuid>,
        /// Mint for the demo admin account.
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum SemesterCommand {
    /// Detach the semester's registrations and waitlist partitions (and move
    /// its dead letters) into the `archive` schema, to dump and drop there.
    /// Refused while the semester is active, its registration window is not
    /// over, or any of its events is not yet in PostgreSQL. Safe to repeat.
    Detach {
        /// The semester's id (a UUID).
        semester_id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the settings (exit 2 with the setting at fault
    /// otherwise) and say where they came from.
    Check,
    /// Print the effective settings as TOML, secrets redacted.
    Print,
}

/// What `registrar config check` says about valid settings.
pub fn config_summary(settings: &Settings) -> String {
    let (dir, env) = crate::config::environment();
    let own = dir.join(format!("{env}.toml"));
    let layers = [dir.join("default.toml"), own]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>();
    format!(
        "configuration is valid: APP_ENV={env}; built-in defaults{}{}\n\
         listen {}:{}, metrics {}, database {}, redis {}, rules {}",
        if layers.is_empty() { "" } else { ", then " },
        layers.join(", "),
        settings.http.host,
        settings.http.port,
        settings
            .http
            .metrics_port
            .map_or("on the API port".to_string(), |p| format!(
                "{}:{p}",
                settings.http.metrics_host
            )),
        settings.database.url.redacted(),
        settings.redis.url.redacted(),
        if settings.rules.enabled { "on" } else { "off" },
    )
}

pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("{}", config_summary(&settings));
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Print,
        } => {
            print!(
                "{}",
                toml::to_string(&settings).context("settings could not be written as TOML")?
            );
            Ok(())
        }
        Command::Serve => {
            // Flushed when the guard drops, after the server stopped.
            let (writer, _flush) = tracing_appender::non_blocking(std::io::stdout());
            let traces = telemetry::init(
                &settings.log,
                writer,
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
            )?;
            let app = Application::build(settings).await;
            let served = match app {
                Ok(app) => app.run_until_stopped(shutdown_signal()).await,
                Err(e) => Err(e),
            };
            if let Some(traces) = traces {
                // Sends what is queued; blocking, so off the async threads.
                let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
            }
            served
        }
        Command::Migrate => {
            store::ensure_database(settings.database.url.expose()).await?;
            let pool = store::pool(&settings.database)?;
            let mut client = pool
                .get()
                .await
                .context("failed to connect to PostgreSQL")?;
            let applied = store::migrate::run(&mut client).await?;
            if applied.is_empty() {
                println!("schema is up to date");
            } else {
                for name in applied {
                    println!("applied {name}");
                }
            }
            Ok(())
        }
        Command::Seed {
            students,
            courses,
            sections_per_course,
            seats,
            waitlist,
            password,
            admin_password,
            with_rules,
        } => {
            anyhow::ensure!(
                seats >= 0 && waitlist >= 0,
                "--seats and --waitlist must not be negative"
            );
            let pool = store::pool(&settings.database)?;
            let opts = SeedOptions {
                students,
                courses,
                sections_per_course,
                seats,
                waitlist,
                password,
                admin_password,
            };
            let started = std::time::Instant::now();
            let report = seed::seed(&pool, &opts, |done, total| {
                eprint!("\rstudents: {done}/{total}");
                let _ = std::io::stderr().flush();
            })
            .await?;
            eprintln!();
            println!(
                "seeded in {:.1}s: semester {} with {} sections; {} new students",
                started.elapsed().as_secs_f64(),
                report.semester_id,
                report.section_ids.len(),
                report.students_inserted
            );
            println!(
                "log in as a student: {{\"student_number\": \"{}\", \"password\": \"{}\"}}",
                seed::student_number(1),
                opts.password
            );
            println!(
                "log in as the admin: {{\"student_number\": \"{}\", \"password\": \"{}\"}}",
                seed::ADMIN_NUMBER,
                opts.admin_password
            );
            if with_rules {
                let demo = seed::seed_rules(&pool, report.semester_id).await?;
                println!(
                    "rules on: README \"Registration rules\"; the sections, as shell variables:"
                );
                let mut vars: Vec<String> = demo
                    .sections
                    .iter()
                    .map(|(course, number, id)| {
                        let n = number.trim_start_matches('0');
                        format!("S{}_{}={id}", &course[4..], n)
                    })
                    .collect();
                vars.extend(
                    demo.students
                        .iter()
                        .enumerate()
                        .map(|(i, id)| format!("STUDENT{}={id}", i + 1)),
                );
                println!("export SEMESTER={} {}", report.semester_id, vars.join(" "));
            }
            Ok(())
        }
        Command::Reconcile { fix } => {
            let pool = store::pool(&settings.database)?;
            let redis = Redis::new(&settings.redis)?;
            let reports = reconcile::reconcile(&pool, &redis, fix).await?;
            for report in &reports {
                println!("{}", serde_json::to_string(report)?);
            }
            let drift = reports
                .iter()
                .filter(|r| r.is_drift() && !r.repaired)
                .count();
            let pending = reports.iter().filter(|r| !r.is_drift()).count();
            let repaired = reports.iter().filter(|r| r.repaired).count();
            eprintln!("{drift} sections drifted, {repaired} repaired, {pending} still draining");
            if drift > 0 {
                anyhow::bail!("Redis and PostgreSQL disagree on {drift} sections");
            }
            Ok(())
        }
        Command::Semester {
            command: SemesterCommand::Detach { semester_id },
        } => {
            let pool = store::pool(&settings.database)?;
            let redis = Redis::new(&settings.redis)?;
            let archived = archive::detach_semester(&pool, &redis, semester_id).await?;
            println!(
                "semester {} detached; {} dead letters moved; archived tables:",
                archived.semester, archived.dead_letters
            );
            for table in &archived.tables {
                println!("  {table}");
            }
            let only: Vec<String> = archived
                .tables
                .iter()
                .map(|t| format!("--table={t}"))
                .collect();
            println!("dump them with: pg_dump {} <database>", only.join(" "));
            Ok(())
        }
        Command::Token {
            student_number,
            student_id,
            admin,
            ttl_secs,
        } => {
            let pool = store::pool(&settings.database)?;
            let db = pool
                .get()
                .await
                .context("failed to connect to PostgreSQL")?;
            let number = if admin {
                Some(seed::ADMIN_NUMBER.to_string())
            } else {
                student_number
            };
            let (id, standing) = match (number, student_id) {
                (Some(number), _) => store::students::id_by_number(&db, &number)
                    .await?
                    .with_context(|| format!("no student with number {number}"))?,
                (None, Some(id)) => {
                    let standing = store::students::standing(&db, id)
                        .await?
                        .with_context(|| format!("no student with id {id}"))?;
                    (id, standing)
                }
                (None, None) => {
                    anyhow::bail!("name a student: --student-number, --student-id or --admin")
                }
            };
            let ttl = Duration::from_secs(ttl_secs.unwrap_or(settings.auth.token_ttl_secs));
            let tokens = Tokens::new(settings.auth.jwt_secret.expose().as_bytes(), ttl);
            println!(
                "{}",
                tokens.mint_at(id, standing.role, standing.active, standing.access.epoch)
            );
            Ok(())
        }
    }
}
