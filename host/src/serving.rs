//! One function being served: its HTTP listener (a service) and its message
//! subscriptions, started together and drained together. hearthd's
//! `[[function]]` entries and the control API's Pods are served the same
//! way, through [`Serving`].
//!
//! # Contract
//!
//! * [`Serving::start`] starts the subscriptions first (they pull at
//!   once); if one is refused, the ones already started are dropped (their
//!   messages given back) and the error names the topic. The listener is
//!   bound by the caller (in the Pod's network namespace, say) and handed
//!   over.
//! * [`Serving::run`] serves until [`Drain::drain`] is called (SIGTERM):
//!   then the listener stops accepting and in-flight requests finish (see
//!   [`crate::http::serve`]), and, at the same time, the subscriptions stop
//!   pulling, give in-flight handlers [`DRAIN_GRACE`] and give back what is
//!   still running. It returns when both are done, or at once with the
//!   listener's error (which drains the subscriptions too).
//! * Dropping the [`Serving::run`] future instead (SIGKILL, an aborted
//!   task) drops every connection and in-flight request at once, and the
//!   subscriptions give the messages they hold back for redelivery.

use crate::function::Function;
use crate::messages::{Subscription, SubscriptionSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight message handlers get to finish when a function is
/// drained.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why a function could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// It has subscriptions but no broker to subscribe on.
    #[error(
        "function `{function}` subscribes to messages, but this host has no message broker ([messaging.brokers])"
    )]
    NoBroker {
        /// The function.
        function: String,
    },
    /// A subscription was refused.
    #[error(transparent)]
    Subscribe(#[from] crate::messages::SubscribeError),
}

/// A function with its listener and running subscriptions; see the module
/// docs.
pub struct Serving {
    function: Arc<Function>,
    listener: Option<TcpListener>,
    subscriptions: Vec<Subscription>,
    drain: Drain,
}

/// Asks a [`Serving`] to drain (SIGTERM); cheap to clone.
#[derive(Clone)]
pub struct Drain(Arc<watch::Sender<bool>>);

impl Drain {
    /// Starts draining; later calls do nothing more.
    pub fn drain(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once draining was asked for.
    async fn requested(&self) {
        let mut asked = self.0.subscribe();
        let _ = asked.wait_for(|drain| *drain).await;
    }
}

impl Serving {
    /// Starts `subscriptions` of `function` on its broker, and keeps
    /// `listener` (services) for [`Serving::run`].
    pub async fn start(
        function: Arc<Function>,
        listener: Option<TcpListener>,
        subscriptions: &[SubscriptionSettings],
    ) -> Result<Self, ServeError> {
        let mut started = Vec::with_capacity(subscriptions.len());
        for settings in subscriptions {
            let broker =
                function
                    .capabilities()
                    .broker()
                    .cloned()
                    .ok_or_else(|| ServeError::NoBroker {
                        function: function.name().to_string(),
                    })?;
            // On `?`, the subscriptions started so far are dropped: their
            // messages are given back.
            started.push(Subscription::start(function.clone(), broker, settings.clone()).await?);
        }
        Ok(Serving {
            function,
            listener,
            subscriptions: started,
            drain: Drain(Arc::new(watch::channel(false).0)),
        })
    }

    /// The address the listener is bound to, if it is a service.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The function served.
    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    /// The handle that drains it.
    pub fn drain_handle(&self) -> Drain {
        self.drain.clone()
    }

    /// Serves until drained (see the module docs).
    pub async fn run(self) -> std::io::Result<()> {
        let Serving {
            function,
            listener,
            subscriptions,
            drain,
        } = self;
        let serving = async {
            let result = match listener {
                Some(listener) => {
                    crate::http::serve(function.clone(), listener, drain.requested()).await
                }
                None => {
                    drain.requested().await;
                    Ok(())
                }
            };
            // A failed listener takes the subscriptions down too.
            drain.drain();
            result
        };
        let handling = async {
            drain.requested().await;
            let drains = subscriptions
                .into_iter()
                .map(|subscription| subscription.drain(DRAIN_GRACE));
            futures_util::future::join_all(drains).await;
        };
        let (served, ()) = tokio::join!(serving, handling);
        served
    }
}
