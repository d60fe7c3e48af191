//! `--streams N`: live update streams held open through the scenario phase,
//! to measure what they cost the registrations (issue 16, item 3). Half are
//! students' own streams (`/api/v1/students/me/events`, the first students,
//! whose registrations then produce standing events), half section streams
//! spread over the scenario's sections (every committed batch of a section
//! nudges each of its watchers). Each is read to the end like a browser
//! would, counting events and bytes.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{client::conn::http1, header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};
use uuid::Uuid;

pub struct Streams {
    pub open: usize,
    pub events: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    readers: Vec<JoinHandle<()>>,
}

impl Streams {
    /// Opens `n` streams over `addrs` (stream i on instance i mod N).
    pub async fn open(
        addrs: &[SocketAddr],
        students: &[(Uuid, String)],
        sections: &[Uuid],
        n: usize,
    ) -> anyhow::Result<Self> {
        let events = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::with_capacity(n);
        for i in 0..n {
            let (_, token) = &students[i / 2 % students.len()];
            let path = if i % 2 == 0 {
                "/api/v1/students/me/events".to_string()
            } else {
                format!(
                    "/api/v1/sections/{}/events",
                    sections[i / 2 % sections.len()]
                )
            };
            let stream = TcpStream::connect(addrs[i % addrs.len()]).await?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let response = sender
                .send_request(
                    Request::get(path.as_str())
                        .header(header::HOST, "registrar")
                        .header(header::AUTHORIZATION, format!("Bearer {token}"))
                        .body(Empty::<Bytes>::new())?,
                )
                .await?;
            anyhow::ensure!(
                response.status() == StatusCode::OK,
                "stream {path}: {}",
                response.status()
            );
            let (events, bytes) = (events.clone(), bytes.clone());
            readers.push(tokio::spawn(async move {
                let _sender = sender;
                let mut body = response.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        let text = String::from_utf8_lossy(data);
                        events
                            .fetch_add(text.matches("\ndata: ").count() as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Self {
            open: n,
            events,
            bytes,
            readers,
        })
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How many are still open (a stream the server ended is not).
    pub fn still_open(&self) -> usize {
        self.readers.iter().filter(|r| !r.is_finished()).count()
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}
