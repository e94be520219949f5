//! The interactive loop: one `select!` over keys (first, so they never wait behind
//! updates), messages from the network tasks, and the interval tick; then one draw.
//! Effects returned by [`App::update`] are spawned as tasks that answer with a
//! [`Msg`] on the same channel: the loop itself never awaits the network.

use std::time::Duration;

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::app::{App, Effect};
use crate::client::AdminClient;
use crate::discover::Sources;
use crate::msg::Msg;
use crate::{poller, term, view};

/// Channel capacity: small, the pollers wait rather than pile up stale samples.
const CHANNEL: usize = 64;

pub async fn run(client: AdminClient, sources: Sources, interval: Duration) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let source = match (&sources.redis, sources.nodes.len()) {
        (Some(_), 0) => format!("registry {}:nodes", sources.prefix),
        (Some(_), n) => format!("registry + {n} --node"),
        (None, _) if sources.local => "this host's node".to_owned(),
        (None, n) => format!("{n} --node"),
    };
    let mut app = App::new(interval, source);
    let supervisor = poller::spawn(client.clone(), sources, interval, tx.clone());
    let (mut terminal, _guard) = term::setup()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(interval);
    while !app.quit {
        terminal.draw(|f| view::draw(f, &app))?;
        let msg = tokio::select! {
            biased;
            ev = keys.next() => match ev {
                Some(Ok(Event::Key(k))) => Msg::Key(k),
                Some(Ok(Event::Resize(..))) => Msg::Resize,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some(m) = rx.recv() => m,
            _ = tick.tick() => Msg::Tick,
        };
        let mut effects = app.update(msg);
        // Take whatever else is queued before drawing again.
        while let Ok(m) = rx.try_recv() {
            effects.extend(app.update(m));
        }
        for e in effects {
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                let msg = match e {
                    Effect::Act { admin, action } => {
                        let r = poller::perform(&client, &admin, &action).await;
                        Msg::Done(admin, action, r)
                    }
                    Effect::FetchTuning(admin) => {
                        let r = client.tuning(&admin).await.map_err(|e| e.to_string());
                        Msg::Tuning(admin, r)
                    }
                };
                let _ = tx.send(msg).await;
            });
        }
    }
    supervisor.abort();
    Ok(())
}
