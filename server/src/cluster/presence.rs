//! Presence across the cluster: each node keeps a Redis hash
//! `{<prefix>}:presence:<node>` (hash-tagged like the registry keys, so one pipeline
//! reads every node's hash on a Redis Cluster too) of user -> connections on that
//! node, fed by a background task (connects and disconnects never wait on Redis) and
//! expiring with the node's registry entry. A query sums the hashes of the nodes the
//! registry lists as live, so a node killed without cleaning up stops counting as
//! soon as its announcement expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_shared::UserId;
use rand::Rng;
use tokio::sync::mpsc;

use super::{RedisConnection, keys, registry};
use crate::hub::Hub;
use crate::presence::{Presence, PresenceError};
use crate::tasks::Tasks;

/// Presence across the cluster, in Redis.
pub struct RedisPresence {
    con: RedisConnection,
    prefix: String,
    tx: mpsc::UnboundedSender<(UserId, i64)>,
}

impl RedisPresence {
    /// Starts the writer task. The node's hash starts empty: counts from a previous
    /// life of the same node id are dropped.
    pub async fn start(
        tasks: &Tasks,
        con: RedisConnection,
        prefix: String,
        node_id: String,
        hub: Arc<Hub>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = con.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(keys::presence(&prefix, &node_id))
            .query_async(&mut c)
            .await;
        tasks.spawn(
            "presence writer",
            writer(
                c,
                keys::presence(&prefix, &node_id),
                keys::presence_next(&prefix, &node_id),
                hub,
                rx,
            ),
        );
        Self { con, prefix, tx }
    }
}

/// How often the node checks its presence hash against the hub: `HLEN` (one O(1)
/// command) against the hub's count of users. A hash Redis lost (a restart without
/// persistence, an expiry while the node could not reach it) or one an increment
/// batch failed to reach is rewritten at the next check.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The longest the hash goes without a rewrite, for what a length cannot show: a
/// failover to a replica that missed some increments of users it still has.
const REWRITE_AT_LEAST_EVERY: Duration = Duration::from_secs(300);

/// Fields per command of a rewrite: Redis serves other clients between two.
const REWRITE_CHUNK: usize = 1000;

/// When the first check happens: at a random point of the first period, not at
/// start. Nodes of a cluster usually start together; aligned, every node's rewrite
/// (a command per [`REWRITE_CHUNK`] users) would land in the same moment of each
/// period, and Redis would answer everyone else (subscribers, the brokers' probes)
/// only after all of them.
fn first_check() -> tokio::time::Instant {
    let offset = CHECK_EVERY.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::Instant::now() + offset
}

/// Applies deltas in pipelined batches (a failed batch is retried with the next),
/// deleting the fields that reach 0 so that the hash holds exactly the users the hub
/// holds, and every [`CHECK_EVERY`] (from a random first moment, [`first_check`])
/// rewrites the whole hash from the hub if it may be wrong: a batch or a rewrite
/// failed since the last rewrite, its length differs from the hub's users, or
/// [`REWRITE_AT_LEAST_EVERY`] has passed. A full rewrite of every node's users every
/// few seconds was what holding a large cluster idle cost most, in the node and in
/// Redis; a check costs one command.
async fn writer(
    mut con: RedisConnection,
    hash: String,
    next: String,
    hub: Arc<Hub>,
    mut rx: mpsc::UnboundedReceiver<(UserId, i64)>,
) {
    let mut pending: HashMap<UserId, i64> = HashMap::new();
    let mut check = tokio::time::interval_at(first_check(), CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing is known of the hash until the first rewrite.
    let mut suspect = true;
    let mut rewritten = tokio::time::Instant::now();
    loop {
        tokio::select! {
            delta = rx.recv() => {
                let Some((user, delta)) = delta else { return };
                *pending.entry(user).or_default() += delta;
                while let Ok((user, delta)) = rx.try_recv() {
                    *pending.entry(user).or_default() += delta;
                    if pending.len() >= 1000 {
                        break;
                    }
                }
                pending.retain(|_, d| *d != 0);
                if pending.is_empty() {
                    continue;
                }
                match apply(&mut con, &hash, &pending).await {
                    Ok(()) => pending.clear(),
                    Err(e) => {
                        suspect = true;
                        tracing::warn!(error = %e, "presence update failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            _ = check.tick() => {
                let due = suspect
                    || rewritten.elapsed() >= REWRITE_AT_LEAST_EVERY
                    || (pending.is_empty()
                        && rx.is_empty()
                        && hash_len(&mut con, &hash).await != Some(hub.users()));
                if !due {
                    continue;
                }
                // The hub is the truth: what it holds now replaces the hash, and the
                // deltas already queued are in it.
                let counts = hub.user_counts();
                while rx.try_recv().is_ok() {}
                pending.clear();
                match rewrite(&mut con, &hash, &next, &counts).await {
                    Ok(()) => {
                        suspect = false;
                        rewritten = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        suspect = true;
                        tracing::warn!(error = %e, "presence full sync failed; next in {CHECK_EVERY:?}");
                    }
                }
            }
        }
    }
}

/// Adds `deltas` to the hash in one pipeline, then deletes the fields that reached
/// 0 (this task is the hash's only writer, so none can have moved in between).
async fn apply(
    con: &mut RedisConnection,
    hash: &str,
    deltas: &HashMap<UserId, i64>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for (user, delta) in deltas {
        pipe.cmd("HINCRBY").arg(hash).arg(user.as_str()).arg(*delta);
    }
    pipe.cmd("PEXPIRE")
        .arg(hash)
        .arg(registry::TTL.as_millis() as u64)
        .ignore();
    let counts: Vec<i64> = pipe.query_async(con).await?;
    let gone: Vec<&str> = deltas
        .keys()
        .zip(&counts)
        .filter(|(_, n)| **n <= 0)
        .map(|(user, _)| user.as_str())
        .collect();
    if !gone.is_empty() {
        redis::cmd("HDEL")
            .arg(hash)
            .arg(&gone)
            .query_async::<()>(con)
            .await?;
    }
    Ok(())
}

/// The number of fields of `hash`; `None` if Redis did not answer (then the check
/// finds it wrong, and the rewrite that follows tells whether Redis is back).
async fn hash_len(con: &mut RedisConnection, hash: &str) -> Option<usize> {
    redis::cmd("HLEN").arg(hash).query_async(con).await.ok()
}

/// Replaces `hash` with `counts` without holding Redis for long. The counts go into
/// `next` a [`REWRITE_CHUNK`] at a time, outside any transaction, so Redis serves
/// other clients in between (one transaction of every user held Redis for as long as
/// the whole write, for every client, on every rewrite of every node); then one short
/// transaction swaps `next` in. The old hash is UNLINKed, so Redis frees it off its
/// main thread. Readers see the old counts until the swap, never a half-written hash.
async fn rewrite(
    con: &mut RedisConnection,
    hash: &str,
    next: &str,
    counts: &[(UserId, u32)],
) -> redis::RedisResult<()> {
    let ttl = registry::TTL.as_millis() as u64;
    let mut fill = redis::pipe();
    // What a rewrite that failed half-way left behind.
    fill.cmd("UNLINK").arg(next).ignore();
    for chunk in counts.chunks(REWRITE_CHUNK) {
        let mut hset = redis::cmd("HSET");
        hset.arg(next);
        for (user, n) in chunk {
            hset.arg(user.as_str()).arg(*n);
        }
        fill.add_command(hset).ignore();
    }
    fill.cmd("PEXPIRE").arg(next).arg(ttl).ignore();
    fill.query_async::<()>(con).await?;
    let mut swap = redis::pipe();
    swap.atomic().cmd("UNLINK").arg(hash).ignore();
    if !counts.is_empty() {
        // RENAME of a key that does not exist (no users: nothing was written) fails.
        swap.cmd("RENAME").arg(next).arg(hash).ignore();
    }
    swap.cmd("PEXPIRE").arg(hash).arg(ttl).ignore();
    swap.query_async(con).await
}

#[async_trait]
impl Presence for RedisPresence {
    fn changed(&self, user: &UserId, delta: i64) {
        let _ = self.tx.send((user.clone(), delta));
    }

    async fn connections(&self, user: &UserId) -> Result<u64, PresenceError> {
        let mut con = self.con.clone();
        let nodes = registry::list(&mut con, &self.prefix)
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        if nodes.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("HGET")
                .arg(keys::presence(&self.prefix, &n.id))
                .arg(user.as_str());
        }
        let counts: Vec<Option<i64>> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(counts.into_iter().flatten().filter(|c| *c > 0).sum::<i64>() as u64)
    }
}
