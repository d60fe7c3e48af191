//! LISTEN on one PostgreSQL channel over a connection of its own (a pooled
//! connection would be handed to others between notifications).

use std::str::FromStr;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::config::DatabaseSettings;

/// Notifications queued between the connection and their consumer; beyond
/// it the connection waits (PostgreSQL keeps them meanwhile).
const QUEUE: usize = 1024;

/// A listening connection: payloads arrive on `payloads`, which ends when
/// the connection does.
pub struct Listener {
    _client: tokio_postgres::Client,
    pub payloads: mpsc::Receiver<String>,
}

/// Connects and runs `LISTEN channel`; `channel` is one of ours, never input.
pub async fn listen(
    settings: &DatabaseSettings,
    channel: &'static str,
) -> anyhow::Result<Listener> {
    let mut pg = tokio_postgres::Config::from_str(settings.url.expose())
        .context("database.url is not a PostgreSQL URL")?;
    pg.connect_timeout(settings.connect_timeout_ms.duration());
    pg.application_name("registrar-listen");
    let (client, mut connection) = pg
        .connect(NoTls)
        .await
        .context("failed to connect to PostgreSQL to listen")?;
    let (sender, payloads) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send(n.payload().to_string()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, channel, "listening connection failed");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("listen {channel}"))
        .await
        .with_context(|| format!("failed to LISTEN {channel}"))?;
    Ok(Listener {
        _client: client,
        payloads,
    })
}
