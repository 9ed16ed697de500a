//! The message trigger: subscriptions that call a function's
//! `wasi:messaging/incoming-handler` once per delivered message.
//!
//! # Contract (at least once)
//!
//! * A [`Subscription`] pulls from one topic as one consumer group, with at
//!   most `concurrency` handler invocations in flight; each invocation gets
//!   a pooled instance of the function (a pool hit when one is idle) and the
//!   function's deadline (`request_timeout_ms`).
//! * The handler returns `ok`: the message is acked. It returns `err`,
//!   traps, runs out its deadline or blows its memory limit: it is nacked
//!   and delivered again after `backoff × 2^(attempt-1)` (capped at
//!   `max_backoff`); a trapped or timed-out instance is discarded, never
//!   reused. The handler may settle it first with
//!   `hearth:function/messaging` `ack` / `nack(delay, reason)`.
//! * A message that failed its `max_deliveries`-th attempt (or arrives with
//!   more attempts than that, because a handler kept it past its
//!   visibility) is published to the dead-letter topic (`<topic>.dlq`
//!   unless configured) with `hearth-error` (the last error),
//!   `hearth-original-topic`, `hearth-original-id`, `hearth-group` and
//!   `hearth-deliveries` headers, and then acked. If that publish fails the
//!   message is nacked instead: it is never dropped.
//! * A handler that keeps a message past its visibility timeout (without
//!   `extend`) loses it: the broker hands it to another consumer, and this
//!   handler's ack is refused as `lost` — counted in
//!   `hearth_messages_total{outcome="lost"}`; deliveries with `attempt > 1`
//!   are counted as `redelivered`.
//! * [`Subscription::drain`]: stop pulling, give in-flight handlers the grace
//!   period, then nack what is still running (delivered again at once) and
//!   return.
//! * Every failure is logged once with the function, topic and message id.
//! * **Names are the function's namespace's** (see [`crate::tenancy`]): the
//!   settings name topics and groups as the guest does; the subscription
//!   uses the broker's names (`NAMESPACE.topic`, `NAMESPACE.group`), so a
//!   Pod of another namespace can neither read these topics nor join these
//!   groups. Another namespace's topic (`NS:topic`) is refused
//!   ([`SubscribeError::NotAllowed`]) unless the policy lists it; its dead
//!   letters go to the subscriber's own `NS.topic.dlq`.

use crate::capabilities::messaging::{InHand, MessageHandle, Settled};
use crate::function::Function;
use crate::invocation_error::InvocationError;
use crate::propagation::{RequestContext, TRACEPARENT_HEADER};
use crate::stats::SubscriptionStats;
use crate::telemetry::{self, Kind};
use hearth_messaging::{
    Broker, Consumer, Delivery, MessagingError, OutgoingMessage, Receipt, SubscriptionSpec,
};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// One subscription of one function, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// The topic.
    pub topic: String,
    /// The consumer group (default: the function's name).
    pub group: String,
    /// How long a delivered message stays invisible to other consumers.
    pub visibility: Duration,
    /// Handler invocations in flight at most.
    pub concurrency: u32,
    /// Attempts before a message is dead-lettered.
    pub max_deliveries: u32,
    /// The first redelivery delay after a failure.
    pub backoff: Duration,
    /// The longest redelivery delay.
    pub max_backoff: Duration,
    /// Where dead letters go (default `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
}

impl SubscriptionSettings {
    /// Defaults for `topic`, group `group`.
    pub fn new(topic: &str, group: &str) -> Self {
        SubscriptionSettings {
            topic: topic.into(),
            group: group.into(),
            visibility: Duration::from_secs(30),
            concurrency: 4,
            max_deliveries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            dead_letter_topic: None,
        }
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The delay before redelivering a message whose `attempt` failed.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The group a function's subscriptions use unless they name one: its
    /// name, with characters a group may not hold replaced by `-`.
    pub fn default_group(function: &str) -> String {
        function.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "-",
        )
    }

    /// Parses `hearth.dev/subscribe`: `topic[,topic...]`, each optionally
    /// `topic@group` (default group: [`Self::default_group`] of `function`).
    pub fn from_annotation(value: &str, function: &str) -> Result<Vec<Self>, MessagingError> {
        let default_group = Self::default_group(function);
        let default_group = default_group.as_str();
        let mut out = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (topic, group) = match entry.split_once('@') {
                Some((topic, group)) => (topic.trim(), group.trim()),
                None => (entry, default_group),
            };
            crate::capabilities::messaging::validate_guest_topic(topic)?;
            hearth_messaging::validate_topic(group).map_err(|error| match error {
                MessagingError::InvalidArgument(why) => {
                    MessagingError::InvalidArgument(format!("group: {why}"))
                }
                other => other,
            })?;
            out.push(SubscriptionSettings::new(topic, group));
        }
        if out.is_empty() {
            return Err(MessagingError::InvalidArgument("no topic given".into()));
        }
        Ok(out)
    }
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The function has no message handler to call.
    #[error(
        "function `{function}` does not export `{}`, so it cannot subscribe to `{topic}`",
        crate::function::MESSAGE_HANDLER
    )]
    NoHandler {
        /// The function.
        function: String,
        /// The topic.
        topic: String,
    },
    /// Its settings are out of range.
    #[error("subscription to `{topic}`: concurrency and max_deliveries must be at least 1")]
    Settings {
        /// The topic.
        topic: String,
    },
    /// The topic is another namespace's, and the policy does not list it.
    #[error("{0}")]
    NotAllowed(String),
    /// The broker refused it.
    #[error("function `{function}`: cannot subscribe to `{topic}`: {cause}")]
    Broker {
        /// The function.
        function: String,
        /// The topic.
        topic: String,
        /// The broker's error.
        cause: MessagingError,
    },
}

/// A running subscription.
pub struct Subscription {
    settings: SubscriptionSettings,
    stats: Arc<SubscriptionStats>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The pull loop; taken by [`Subscription::drain`].
    task: Option<tokio::task::JoinHandle<()>>,
    grace: Arc<Mutex<Duration>>,
    dispatch: Arc<Dispatch>,
}

/// Called with each delivery right before its handler starts (benchmarks
/// measure publish → handler start with it).
pub type StartObserver = Arc<dyn Fn(&Delivery) + Send + Sync>;

/// Where a subscription's handler invocations run.
struct Dispatch {
    on_start: Option<StartObserver>,
    function: Arc<Function>,
    broker: Broker,
    consumer: Arc<dyn Consumer>,
    settings: SubscriptionSettings,
    stats: Arc<SubscriptionStats>,
    /// Deliveries being handled now.
    in_flight: Mutex<HashSet<Receipt>>,
}

impl Subscription {
    /// Subscribes `function` (which must export the message handler) on
    /// `broker` and starts pulling.
    pub async fn start(
        function: Arc<Function>,
        broker: Broker,
        settings: SubscriptionSettings,
    ) -> Result<Self, SubscribeError> {
        Self::start_observed(function, broker, settings, None).await
    }

    /// `settings` with the broker's names of its topics and group (see
    /// [`crate::capabilities::messaging`]: scoped to the function's
    /// namespace; another namespace's topic only if the policy lists it).
    fn in_broker_names(
        function: &Function,
        mut settings: SubscriptionSettings,
    ) -> Result<SubscriptionSettings, SubscribeError> {
        let scope = &function.capabilities().messaging;
        // Dead letters stay in the subscriber's namespace, even for another
        // namespace's topic (`team-b:orders` -> `team-b.orders.dlq` of its own).
        let dead_letter_topic = match &settings.dead_letter_topic {
            Some(topic) => scope.broker_topic(topic),
            None => scope.broker_topic(&settings.dead_letter_topic().replace(':', ".")),
        }
        .map_err(SubscribeError::NotAllowed)?;
        settings.topic = scope
            .broker_topic(&settings.topic)
            .map_err(SubscribeError::NotAllowed)?;
        settings.group = scope.broker_group(&settings.group);
        settings.dead_letter_topic = Some(dead_letter_topic);
        Ok(settings)
    }

    /// [`Subscription::start`], calling `on_start` before each handler runs.
    pub async fn start_observed(
        function: Arc<Function>,
        broker: Broker,
        settings: SubscriptionSettings,
        on_start: Option<StartObserver>,
    ) -> Result<Self, SubscribeError> {
        if function.message_handler().is_none() {
            return Err(SubscribeError::NoHandler {
                function: function.name().to_string(),
                topic: settings.topic.clone(),
            });
        }
        if settings.concurrency == 0 || settings.max_deliveries == 0 {
            return Err(SubscribeError::Settings {
                topic: settings.topic.clone(),
            });
        }
        let settings = Self::in_broker_names(&function, settings)?;
        let consumer = broker
            .subscribe(&SubscriptionSpec {
                topic: settings.topic.clone(),
                group: settings.group.clone(),
                visibility: settings.visibility,
            })
            .await
            .map_err(|cause| SubscribeError::Broker {
                function: function.name().to_string(),
                topic: settings.topic.clone(),
                cause,
            })?;
        let stats = Arc::new(SubscriptionStats {
            namespace: function.env().namespace.clone(),
            function: function.name().to_string(),
            topic: settings.topic.clone(),
            group: settings.group.clone(),
            ..Default::default()
        });
        function.host().subscriptions().register(&stats);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let grace = Arc::new(Mutex::new(Duration::from_secs(10)));
        let dispatch = Arc::new(Dispatch {
            on_start,
            function: function.clone(),
            broker,
            consumer,
            settings: settings.clone(),
            stats: stats.clone(),
            in_flight: Mutex::default(),
        });
        tracing::info!(
            function = %function.name(),
            topic = %settings.topic,
            group = %settings.group,
            concurrency = settings.concurrency,
            "subscribed function `{}` to `{}`",
            function.name(),
            settings.topic
        );
        let task = tokio::spawn(pull_loop(dispatch.clone(), stopped, grace.clone()));
        Ok(Subscription {
            settings,
            stats,
            stop,
            task: Some(task),
            grace,
            dispatch,
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &SubscriptionSettings {
        &self.settings
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<SubscriptionStats> {
        &self.stats
    }

    /// Stops pulling, lets in-flight handlers finish within `grace`, nacks
    /// the rest, and returns when all is settled.
    pub async fn drain(mut self, grace: Duration) {
        *self.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Dropping a subscription that was not drained stops it at once (a
/// SIGKILL): the pull loop and its handlers are aborted, and the messages
/// they held are given back for immediate redelivery (if the broker
/// refuses, they come back when their visibility runs out).
impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        let held: Vec<Receipt> = self
            .dispatch
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        tracing::info!(function = %self.dispatch.function.name(), topic = %self.settings.topic, in_flight = held.len(), "subscription stopped without draining");
        if held.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let dispatch = self.dispatch.clone();
        runtime.spawn(async move {
            for receipt in held {
                if let Err(error) = dispatch
                    .consumer
                    .nack(&receipt, Duration::ZERO, "the function was stopped while handling it")
                    .await
                {
                    tracing::debug!(error = %error, sequence = receipt.sequence, "nack after stop refused; the message comes back when its visibility runs out");
                }
                dispatch.stats.nacked.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// How long one receive waits before looking at the stop signal again.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

async fn pull_loop(
    dispatch: Arc<Dispatch>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    grace: Arc<Mutex<Duration>>,
) {
    let permits = Arc::new(Semaphore::new(dispatch.settings.concurrency as usize));
    let mut handlers = tokio::task::JoinSet::new();
    let mut failures = 0u32;
    loop {
        if *stopped.borrow() {
            break;
        }
        let first = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = stopped.changed() => break,
        };
        let mut held = vec![first];
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            held.push(permit);
        }
        // Not raced against the stop signal: a receive cut short could
        // leave messages taken but never handled.
        match dispatch.consumer.receive(held.len(), RECEIVE_WAIT).await {
            Ok(deliveries) => {
                if failures > 0 {
                    tracing::info!(function = %dispatch.function.name(), topic = %dispatch.settings.topic, "receiving again after {failures} failed attempts");
                }
                failures = 0;
                for (delivery, permit) in deliveries.into_iter().zip(held.drain(..)) {
                    dispatch
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(delivery.receipt);
                    let dispatch = dispatch.clone();
                    handlers.spawn(async move {
                        dispatch.handle(delivery).await;
                        drop(permit);
                    });
                }
            }
            Err(error) => {
                failures += 1;
                dispatch
                    .stats
                    .receive_errors
                    .fetch_add(1, Ordering::Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(function = %dispatch.function.name(), topic = %dispatch.settings.topic, error = %error, failures, "cannot receive messages");
                }
                let pause = Duration::from_millis(100 << failures.min(6));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => break,
                }
            }
        }
        while handlers.try_join_next().is_some() {}
    }
    // Drain.
    let grace = *grace.lock().unwrap_or_else(|e| e.into_inner());
    let finished = tokio::time::timeout(grace, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        handlers.abort_all();
        while handlers.join_next().await.is_some() {}
        let left: Vec<Receipt> = dispatch
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for receipt in left {
            tracing::warn!(function = %dispatch.function.name(), topic = %dispatch.settings.topic, sequence = receipt.sequence, "handler still running at shutdown; message given back");
            if let Err(error) = dispatch
                .consumer
                .nack(
                    &receipt,
                    Duration::ZERO,
                    "hearthd shut down while it was being handled",
                )
                .await
            {
                tracing::warn!(error = %error, "nack at shutdown failed; the message comes back when its visibility runs out");
            }
            dispatch.stats.nacked.fetch_add(1, Ordering::Relaxed);
        }
    }
    tracing::info!(function = %dispatch.function.name(), topic = %dispatch.settings.topic, "subscription drained");
}

/// What one handler invocation came to.
enum Handled {
    /// `handle` returned `ok`.
    Ok,
    /// `handle` returned `err`, or the invocation failed: the error.
    Failed(String),
}

impl Dispatch {
    async fn handle(&self, delivery: Delivery) {
        let stats = &self.stats;
        let settings = &self.settings;
        let function = self.function.name();
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        if delivery.attempt > 1 {
            stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let receipt = delivery.receipt;
        if delivery.attempt > settings.max_deliveries {
            let error = delivery.last_error.clone().unwrap_or_else(|| {
                format!(
                    "delivered {} times without being acked",
                    delivery.attempt - 1
                )
            });
            self.dead_letter(&delivery, &error).await;
            self.done(&receipt);
            return;
        }
        let (handled, settled) = self.invoke(&delivery).await;
        let failure = match (settled, handled) {
            (Some(Settled::Acked), _) => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                None
            }
            (Some(Settled::Nacked { delay_ms, reason }), _) => Some((delay_ms, reason)),
            (None, Handled::Ok) => {
                match self.consumer.ack(&receipt).await {
                    Ok(()) => {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => self.settle_failed(&delivery, "ack", &error),
                }
                None
            }
            (None, Handled::Failed(error)) => Some((0, error)),
        };
        if let Some((delay_ms, error)) = failure {
            tracing::warn!(
                %function,
                topic = %delivery.topic,
                id = %delivery.id,
                attempt = delivery.attempt,
                error = %error,
                "message handler failed"
            );
            if delivery.attempt >= settings.max_deliveries {
                self.dead_letter(&delivery, &error).await;
            } else {
                let delay = if delay_ms > 0 {
                    Duration::from_millis(delay_ms)
                } else {
                    settings.backoff_after(delivery.attempt)
                };
                match self.consumer.nack(&receipt, delay, &error).await {
                    Ok(()) => {
                        stats.nacked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => self.settle_failed(&delivery, "nack", &error),
                }
            }
        }
        self.done(&receipt);
    }

    fn done(&self, receipt: &Receipt) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(receipt);
    }

    fn settle_failed(
        &self,
        delivery: &Delivery,
        what: &str,
        error: &hearth_messaging::MessagingError,
    ) {
        if matches!(error, hearth_messaging::MessagingError::Lost { .. }) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            function = %self.function.name(),
            topic = %delivery.topic,
            id = %delivery.id,
            error = %error,
            "{what} of a handled message failed; it will be delivered again"
        );
    }

    /// Runs the handler on a pooled instance (see [`crate::invocation`]),
    /// as a consumer span: a child of the message's `traceparent` header
    /// (the publish's span), the parent of the handler's capability calls.
    async fn invoke(&self, delivery: &Delivery) -> (Handled, Option<Settled>) {
        let function = &self.function;
        let traceparent = delivery
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT_HEADER))
            .map(|(_, value)| value.as_str());
        // The broker's names of topic and group, as in the log and metrics.
        let span = telemetry::start_request(
            || format!("process {}", delivery.topic).into(),
            Kind::Consumer,
            traceparent,
        );
        span.set("messaging.operation.type", || "process");
        span.set("messaging.destination.name", || delivery.topic.clone());
        span.set("messaging.consumer.group.name", || {
            self.settings.group.clone()
        });
        span.set("messaging.message.id", || delivery.id.clone());
        span.set("hearth.delivery.attempt", || i64::from(delivery.attempt));
        span.set("hearth.function", || function.name().to_string());
        span.set("k8s.namespace.name", || {
            function.env().namespace.to_string()
        });
        let context = RequestContext {
            depth: 0,
            request_id: Some(delivery.id.clone()),
            traceparent: traceparent.map(str::to_string),
            trace: span.context(),
        };
        let (handled, settled) = self.invoke_in(delivery, context).await;
        if let Handled::Failed(why) = &handled {
            span.fail(why.split(':').next().unwrap_or("failed"), why);
        }
        (handled, settled)
    }

    /// `invoke`, once the message's context is known.
    async fn invoke_in(
        &self,
        delivery: &Delivery,
        context: RequestContext,
    ) -> (Handled, Option<Settled>) {
        let function = &self.function;
        let failed = |error: InvocationError| Handled::Failed(format!("{}: {error}", error.name()));
        let Some(indices) = function.message_handler() else {
            return (Handled::Failed("no message handler".into()), None);
        };
        let timeout = function.env().limits.request_timeout();
        let mut invocation = match function.begin(Some(timeout), context).await {
            Ok(invocation) => invocation,
            Err(error) => return (failed(error), None),
        };
        invocation.store_data().set_in_hand(Some(InHand {
            consumer: self.consumer.clone(),
            delivery: delivery.clone(),
            group: self.settings.group.clone(),
            settled: None,
        }));
        let deadline = invocation.deadline();
        let scope = function.capabilities().messaging.clone();
        let ready = invocation.ready();
        let result = deadline
            .run(async {
                let message = ready
                    .store
                    .data_mut()
                    .table()
                    .push(MessageHandle::from_delivery(delivery, &scope))?;
                let handler = indices.load(&mut ready.store, &ready.instance)?;
                if let Some(on_start) = &self.on_start {
                    on_start(delivery);
                }
                handler
                    .wasi_messaging_incoming_handler()
                    .call_handle(&mut ready.store, message)
                    .await
            })
            .await;
        let settled = invocation
            .store_data()
            .set_in_hand(None)
            .and_then(|in_hand| in_hand.settled);
        match invocation.finish(result).await {
            Ok(Ok(())) => (Handled::Ok, settled),
            Ok(Err(error)) => (
                Handled::Failed(format!("the handler returned an error: {error:?}")),
                settled,
            ),
            // Logged by `finish`; the instance is discarded.
            Err(error) => (failed(error), settled),
        }
    }

    /// Publishes `delivery` to the dead-letter topic and acks it; if the
    /// publish fails, nacks it instead (nothing is dropped).
    async fn dead_letter(&self, delivery: &Delivery, error: &str) {
        let topic = self.settings.dead_letter_topic();
        let mut headers = delivery.headers.clone();
        headers.extend([
            ("hearth-error".to_string(), one_line(error)),
            ("hearth-original-topic".to_string(), delivery.topic.clone()),
            ("hearth-original-id".to_string(), delivery.id.clone()),
            ("hearth-group".to_string(), self.settings.group.clone()),
            (
                "hearth-deliveries".to_string(),
                delivery.attempt.to_string(),
            ),
        ]);
        let letter = OutgoingMessage {
            topic: topic.clone(),
            data: delivery.data.clone(),
            key: None,
            headers,
            content_type: delivery.content_type.clone(),
            delay: Duration::ZERO,
            priority: 0,
        };
        match self.broker.publish_from_host(&letter).await {
            Ok(_) => {
                tracing::error!(
                    function = %self.function.name(),
                    topic = %delivery.topic,
                    id = %delivery.id,
                    attempts = delivery.attempt,
                    error = %error,
                    "message dead-lettered to `{topic}`"
                );
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if let Err(ack_error) = self.consumer.ack(&delivery.receipt).await {
                    self.settle_failed(delivery, "ack after dead-lettering", &ack_error);
                }
            }
            Err(publish_error) => {
                tracing::error!(topic = %topic, error = %publish_error, "cannot dead-letter message {}; it stays queued", delivery.id);
                let delay = self.settings.max_backoff;
                if let Err(nack_error) = self.consumer.nack(&delivery.receipt, delay, error).await {
                    self.settle_failed(delivery, "nack", &nack_error);
                }
            }
        }
    }
}

fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscribe_annotation_lists_topics_with_optional_groups() {
        let parsed =
            SubscriptionSettings::from_annotation(" orders, refunds@billing ,", "my.worker")
                .unwrap();
        let pairs: Vec<(&str, &str)> = parsed
            .iter()
            .map(|s| (s.topic.as_str(), s.group.as_str()))
            .collect();
        assert_eq!(pairs, [("orders", "my-worker"), ("refunds", "billing")]);
        let bad_group = SubscriptionSettings::from_annotation("orders@no good", "w")
            .unwrap_err()
            .to_string();
        assert!(
            bad_group.starts_with("invalid argument: group: topic \"no good\""),
            "{bad_group}"
        );
        for bad in ["", " , ", "two words", "orders@", "@group"] {
            assert!(
                SubscriptionSettings::from_annotation(bad, "w").is_err(),
                "`{bad}` must be refused"
            );
        }
    }

    #[test]
    fn backoff_doubles_per_attempt_up_to_the_cap() {
        let settings = SubscriptionSettings {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..SubscriptionSettings::new("t", "g")
        };
        let delays: Vec<u128> = (1..=5)
            .map(|attempt| settings.backoff_after(attempt).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }
}
