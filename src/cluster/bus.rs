//! The purge bus: one NATS session at a time (reconnected after failures), publishing the
//! outbox to the JetStream stream and applying other nodes' purges from this node's durable
//! consumer.

use super::{delay_since, Cluster, FleetPurge};
use crate::node::Node;
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use async_trait::async_trait;
use futures::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the consumer's position is checked (caught up?) and the connection looked at.
const TICK: Duration = Duration::from_millis(500);

/// Wait after a failed session before the next attempt.
const BACKOFF: Duration = Duration::from_secs(1);

/// The background service running the bus of a node with `[cluster]`.
pub struct PurgeBus {
    /// The node whose purges travel.
    pub node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for PurgeBus {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(cluster) = self.node.cluster.as_ref() else {
            return;
        };
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ended = session(&self.node, cluster) => {
                    cluster.set_connected(false);
                    if let Err(e) = ended {
                        failures += 1;
                        // the first failure and then one line a minute, not one a second
                        if failures == 1 || failures.is_multiple_of(60) {
                            tracing::warn!(
                                nats = %cluster.config.nats_url,
                                error = format!("{e:#}"),
                                queued = cluster.queued(),
                                "cluster: purge bus unavailable, retrying"
                            );
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(BACKOFF) => {}
            }
        }
    }
}

/// One session with NATS: until it fails.
async fn session(node: &Node, cluster: &Cluster) -> anyhow::Result<()> {
    let config = &cluster.config;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("outpost {}", cluster.node))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .ping_interval(Duration::from_secs(5))
        .max_reconnects(1);
    if let Some(var) = &config.token_env {
        let token =
            std::env::var(var).with_context(|| format!("cluster.token_env: ${var} is not set"))?;
        options = options.token(token);
    }
    let client = options
        .connect(config.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", config.nats_url))?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject()],
            max_age: config.retention,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("opening stream {}", config.stream))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &cluster.node,
            pull::Config {
                durable_name: Some(cluster.node.clone()),
                ack_policy: AckPolicy::Explicit,
                // a node's first consumer replays what the stream holds (purges issued while
                // it was being set up included); afterwards it resumes where it left off
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("opening durable consumer {}", cluster.node))?;
    cluster.set_connected(true);
    tracing::info!(nats = %config.nats_url, stream = %config.stream, consumer = %cluster.node, "cluster: purge bus connected");
    let mut messages = consumer.messages().await.context("consuming")?;
    let publish = async {
        loop {
            while let Some(purge) = cluster.next_queued() {
                let payload = serde_json::to_vec(&purge)?;
                js.publish(config.subject(), payload.into())
                    .await
                    .context("publishing a purge")?
                    .await
                    .context("publishing a purge (no acknowledgement)")?;
                cluster.published(&purge);
            }
            cluster.wake.notified().await;
        }
    };
    let consume = async {
        let mut consumer = consumer.clone();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                next = messages.next() => {
                    let Some(message) = next else {
                        anyhow::bail!("the consumer's message stream ended");
                    };
                    let message = message.context("receiving purges")?;
                    let (pending, published_ms) = match message.info() {
                        Ok(info) => (
                            info.pending,
                            (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                        ),
                        Err(e) => anyhow::bail!("message without JetStream info: {e}"),
                    };
                    let durable = apply(node, cluster, &message.payload, published_ms).await;
                    if durable {
                        message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    }
                    // not durable: not acknowledged, redelivered (after a restart too)
                    if pending == 0 && durable {
                        cluster.caught_up();
                    }
                }
                _ = tick.tick() => {
                    if client.connection_state() != async_nats::connection::State::Connected {
                        anyhow::bail!("connection to NATS lost");
                    }
                    let info = consumer.info().await.context("reading the consumer's position")?;
                    if info.num_pending == 0 && info.num_ack_pending == 0 {
                        cluster.caught_up();
                    }
                }
            }
        }
    };
    tokio::select! {
        r = publish => r,
        r = consume => r,
    }
}

/// Apply one message of the stream; true when it is done with (applied durably, ours, or
/// unreadable), false when it should be delivered again.
async fn apply(node: &Node, cluster: &Cluster, payload: &[u8], published_ms: u64) -> bool {
    let purge: FleetPurge = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: unreadable purge message skipped");
            return true;
        }
    };
    if purge.node == cluster.node {
        // issued here: applied when it was
        return true;
    }
    let (ban, persisted) = node
        .apply_purge(purge.target.clone(), purge.soft, purge.url.as_ref())
        .await;
    let delay = delay_since(published_ms);
    cluster.applied(delay);
    tracing::info!(
        from = %purge.node,
        remote_id = purge.id,
        id = ban.id,
        soft = ban.soft,
        target = ?ban.target,
        delay_ms = delay.as_millis() as u64,
        "cluster: purge applied"
    );
    match persisted {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cluster: purge applied but not recorded on disk; it will be delivered again");
            false
        }
    }
}
