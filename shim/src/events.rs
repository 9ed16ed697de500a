//! The shim's task events (`/tasks/create`, `/tasks/start`, `/tasks/exit`,
//! `/tasks/delete`) on their way to containerd.
//!
//! # Contract
//!
//! * **No task call waits for containerd to take an event.** [`Events::send`]
//!   queues it and returns; one task publishes the queue in order, so
//!   containerd sees a container's events in the order the shim sent them
//!   (create before start before exit before delete), as runc's shim does.
//! * **Nothing queued is lost at a clean exit.** [`Events::flush`] returns
//!   once everything sent before it was published (or failed to be); the
//!   shim flushes before Shutdown lets the process end. A containerd that
//!   takes nothing for [`FLUSH_PATIENCE`] does not keep it alive.
//! * A failed publish is logged (with the topic) and the next event is
//!   published: containerd gone is the shim's end anyway.
//! * The queue holds at most the events of the calls containerd made, a
//!   handful per container.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use log::warn;
use tokio::sync::{mpsc, oneshot};

/// How long [`Events::flush`] waits for containerd.
pub const FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

enum Queued {
    Event(&'static str, Box<dyn MessageDyn>),
    Flush(oneshot::Sender<()>),
}

/// The ordered event queue of one shim; cheap to clone.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Events {
    /// Starts the task that publishes to containerd's `namespace` through
    /// `publisher`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (queue, mut queued) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = queued.recv().await {
                match item {
                    Queued::Event(topic, event) => {
                        let published = publisher
                            .publish(Default::default(), topic, &namespace, event)
                            .await;
                        if let Err(error) = published {
                            warn!("cannot publish {topic}: {error}");
                        }
                    }
                    Queued::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Events { queue }
    }

    /// Queues `event` on `topic`.
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if self.queue.send(Queued::Event(topic, event)).is_err() {
            warn!("cannot publish {topic}: the event queue is gone");
        }
    }

    /// Waits until every event sent before this call was published, or
    /// [`FLUSH_PATIENCE`] passed (a containerd that takes no events must
    /// not keep the shim alive).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_ok()
            && tokio::time::timeout(FLUSH_PATIENCE, flushed).await.is_err()
        {
            warn!(
                "containerd took no events for {} s: exiting with some unpublished",
                FLUSH_PATIENCE.as_secs()
            );
        }
    }
}
