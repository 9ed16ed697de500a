//! `wasi:messaging@0.2.0-draft` (types, producer) and
//! `hearth:function/messaging` over [`hearth_messaging::Broker`].
//!
//! * `client.connect(name)`: `""` or `"default"` is the function's broker;
//!   another name must be a broker label the host has (`connection` error
//!   otherwise). `producer.send(client, topic, message)` publishes the
//!   message's data, content type and metadata (as headers).
//! * `hearth:function/messaging.publish` publishes on the function's broker
//!   with key, headers, delay and priority.
//! * **Topics are per namespace** (see [`crate::tenancy`]). A topic a
//!   guest names, `orders`, is the broker's `NAMESPACE.orders`; a topic of
//!   another namespace is written `NS:orders` and reachable (to publish or
//!   subscribe) only when the function's namespace policy lists it in
//!   `topics`; otherwise `access-denied` / `permission-denied`, logged.
//!   Delivered messages show topics the same way. Consumer groups are
//!   the broker's `NAMESPACE.GROUP`, so no other namespace can join them.
//! * **Brokers.** `connect` reaches the function's own broker and the
//!   brokers its namespace policy lists, no others.
//! * **Allow-list.** When the function's `publish_topics` is set, a topic
//!   must match one of its entries (exact, or a prefix ending in `.>`/`*`):
//!   anything else is `access-denied` / `permission-denied`, logged.
//! * The message in hand ([`InHand`]) is set by the message trigger for one
//!   handler invocation; `extend`, `ack` and `nack` act on it, and
//!   `ack`/`nack` record that the handler settled it (the trigger then
//!   leaves it alone). Outside a handler they answer `no-message`.
//!
//! # Host side
//!
//! [`MessagingScope`] (the function's broker, the brokers it may connect to
//! by label, its allow-list) is resolved once at load; each instance's
//! [`MessagingCtx`] adds the message in hand, and the host functions run on
//! a [`MessagingView`]. [`add_to_linker`] adds all three interfaces.

use super::bindings::hearth::function::messaging as hm;
use super::bindings::wasi::messaging::{producer, types};
use crate::propagation::TRACEPARENT_HEADER;
use crate::telemetry::{Kind, Span, TraceContext};
use crate::tenancy::{ForeignTopic, Identity, topic_matches};
use hearth_messaging::{Broker, Consumer, Delivery, MessagingError, OutgoingMessage};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// What a function may publish to, resolved at load.
#[derive(Debug)]
pub struct MessagingScope {
    /// The function's name (named in refusals and logs).
    pub function: Arc<str>,
    /// Who it is: its namespace scopes its topics and groups.
    pub identity: Identity,
    /// Its broker (`""`/`"default"`), if the host has any.
    pub broker: Option<Broker>,
    /// Other brokers it may `connect` to by label.
    pub brokers: BTreeMap<String, Broker>,
    /// Topics it may publish to; `None` allows any.
    pub publish_topics: Option<Vec<String>>,
    /// Other namespaces' topics it may reach (`NS:topic` patterns, its
    /// namespace's policy).
    pub other_topics: Vec<String>,
}

/// Checks a topic as a guest or a config names it: a topic of the
/// function's own namespace, or `NS:topic` of another.
pub fn validate_guest_topic(topic: &str) -> Result<(), MessagingError> {
    match ForeignTopic::parse(topic) {
        Some(foreign) if !crate::tenancy::is_dns_label(foreign.namespace) => {
            Err(MessagingError::InvalidArgument(format!(
                "topic {:?}: before `:` must come a namespace name",
                topic.chars().take(64).collect::<String>()
            )))
        }
        Some(foreign) => hearth_messaging::validate_topic(foreign.topic),
        None => hearth_messaging::validate_topic(topic),
    }
}

impl MessagingScope {
    /// The broker's name of the guest's `topic`; `Err` (the refusal) for
    /// another namespace's topic the policy does not list.
    pub fn broker_topic(&self, topic: &str) -> Result<String, String> {
        match ForeignTopic::parse(topic) {
            None => Ok(self.identity.in_namespace(topic)),
            Some(foreign) if foreign.namespace == self.identity.namespace() => {
                Ok(self.identity.in_namespace(foreign.topic))
            }
            Some(foreign) => {
                if self.other_topics.iter().any(|p| topic_matches(p, topic)) {
                    Ok(foreign.broker_topic())
                } else {
                    Err(format!(
                        "function `{}` of namespace `{}` may not reach topic `{topic}` of namespace `{}` (topics in [tenancy.namespaces.{}] of hearthd's hearth.toml)",
                        self.function,
                        self.identity.namespace(),
                        foreign.namespace,
                        self.identity.namespace()
                    ))
                }
            }
        }
    }

    /// The guest's name of the broker's `topic`: without its own
    /// namespace, or `NS:topic` for another's.
    pub fn guest_topic(&self, topic: &str) -> String {
        match topic.split_once('.') {
            Some((namespace, rest)) if namespace == self.identity.namespace() => rest.to_string(),
            Some((namespace, rest)) => format!("{namespace}:{rest}"),
            None => topic.to_string(),
        }
    }

    /// The broker's name of the guest's consumer group.
    pub fn broker_group(&self, group: &str) -> String {
        self.identity.in_namespace(group)
    }
}

/// One instance's messaging context.
pub struct MessagingCtx {
    /// What the function may publish to.
    pub scope: Arc<MessagingScope>,
    /// The message a handler invocation holds (set by the message trigger).
    pub in_hand: Option<InHand>,
    /// The span of the request being served (see [`crate::telemetry`]).
    pub trace: TraceContext,
}

/// What messaging host functions run on.
pub struct MessagingView<'a> {
    /// The context.
    pub ctx: &'a mut MessagingCtx,
    /// The instance's resource table (clients and messages live here).
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] marker of the messaging interfaces.
pub struct Messaging;

impl HasData for Messaging {
    type Data<'a> = MessagingView<'a>;
}

/// Adds `wasi:messaging` (types, producer) and `hearth:function/messaging`
/// to `linker`, reaching the view through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> MessagingView<'_>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, Messaging>(linker, get)?;
    producer::add_to_linker::<T, Messaging>(linker, get)?;
    hm::add_to_linker::<T, Messaging>(linker, get)?;
    Ok(())
}

/// A `wasi:messaging/types.client`: the broker it publishes to.
pub struct ClientHandle {
    broker: Broker,
}

/// A `wasi:messaging/types.message`.
#[derive(Debug, Clone, Default)]
pub struct MessageHandle {
    /// The topic it came from (delivered messages).
    pub topic: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// Its media type.
    pub content_type: Option<String>,
    /// Its metadata.
    pub metadata: Vec<(String, String)>,
}

impl MessageHandle {
    /// The guest's view of a delivery to a function of `scope`.
    pub fn from_delivery(delivery: &Delivery, scope: &MessagingScope) -> Self {
        MessageHandle {
            topic: Some(scope.guest_topic(&delivery.topic)),
            data: delivery.data.clone(),
            content_type: delivery.content_type.clone(),
            metadata: delivery.headers.clone(),
        }
    }
}

/// How the handler settled the message in hand itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// `ack` succeeded.
    Acked,
    /// `nack` was called: the trigger nacks it after `handle` returns, with
    /// this delay (0: the subscription's backoff) or dead-letters it.
    Nacked {
        /// The delay asked for, in ms.
        delay_ms: u64,
        /// The handler's reason (the message's error from now on).
        reason: String,
    },
}

/// The message a handler invocation holds.
pub struct InHand {
    /// The subscription's consumer.
    pub consumer: Arc<dyn Consumer>,
    /// The delivery.
    pub delivery: Delivery,
    /// The subscription group.
    pub group: String,
    /// What the handler did with it, if anything.
    pub settled: Option<Settled>,
}

/// Whether `topic` is allowed by `patterns` (no patterns = anything).
pub fn topic_allowed(patterns: Option<&[String]>, topic: &str) -> bool {
    patterns.is_none_or(|patterns| patterns.iter().any(|p| topic_matches(p, topic)))
}

enum PublishError {
    Denied(String),
    NoBroker(String),
    Broker(MessagingError),
}

impl MessagingView<'_> {
    fn broker_for_publish(&self, label: Option<&str>) -> Result<Broker, PublishError> {
        let function = &self.ctx.scope;
        match label {
            None | Some("") | Some("default") => function.broker.clone().ok_or_else(|| {
                PublishError::NoBroker(
                    "no broker is configured on this host ([messaging.brokers] in hearth.toml)"
                        .into(),
                )
            }),
            Some(label) => function.brokers.get(label).cloned().ok_or_else(|| {
                PublishError::NoBroker(format!("no broker labelled `{label}` on this host"))
            }),
        }
    }

    /// Checks the allow-list and publishes, as a span that is a child of
    /// `trace` and the parent named by the message's `traceparent` header
    /// (set here unless the guest set one). Not a method: the view is not
    /// `Sync`, and the future must be `Send`.
    async fn publish_checked(
        function: Arc<MessagingScope>,
        broker: Broker,
        message: OutgoingMessage,
        trace: TraceContext,
    ) -> Result<String, PublishError> {
        let span = trace.start("publish", Kind::Producer);
        span.set("messaging.system", || broker.kind());
        span.set("hearth.broker", || broker.label().to_string());
        let result = Self::publish_checked_in(&span, function, broker, message).await;
        if let Err(error) = &result {
            let (kind, detail) = match error {
                PublishError::Denied(detail) => ("access-denied", detail.clone()),
                PublishError::NoBroker(detail) => ("unavailable", detail.clone()),
                PublishError::Broker(error) => (error.name(), error.to_string()),
            };
            span.fail(kind, detail);
        }
        result
    }

    /// [`Self::publish_checked`] within its `span`.
    async fn publish_checked_in(
        span: &Span,
        function: Arc<MessagingScope>,
        broker: Broker,
        message: OutgoingMessage,
    ) -> Result<String, PublishError> {
        let mut message = message;
        if let Some(traceparent) = span.context().traceparent()
            && !message
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT_HEADER))
        {
            message
                .headers
                .push((TRACEPARENT_HEADER.to_string(), traceparent));
        }
        let broker_topic = function.broker_topic(&message.topic);
        // The broker's name, as in the log and metrics.
        span.set("messaging.destination.name", || {
            broker_topic
                .clone()
                .unwrap_or_else(|_| message.topic.clone())
        });
        if !topic_allowed(function.publish_topics.as_deref(), &message.topic) {
            let detail = format!(
                "function `{}` may not publish to `{}` (publish_topics in its config)",
                function.function, message.topic
            );
            tracing::warn!(function = %function.function, namespace = %function.identity.namespace(), topic = %message.topic, "publish denied: {detail}");
            return Err(PublishError::Denied(detail));
        }
        message.topic = broker_topic.map_err(|detail| {
            tracing::warn!(function = %function.function, namespace = %function.identity.namespace(), topic = %message.topic, "publish denied: {detail}");
            PublishError::Denied(detail)
        })?;
        let message = &message;
        broker.publish(message).await.map_err(|error| {
            tracing::warn!(function = %function.function, topic = %message.topic, error = %error, "publish failed");
            PublishError::Broker(error)
        })
    }

    fn in_hand(&mut self) -> Result<&mut InHand, hm::Error> {
        match &mut self.ctx.in_hand {
            Some(in_hand) if in_hand.settled.is_none() => Ok(in_hand),
            _ => Err(hm::Error::NoMessage),
        }
    }
}

fn hearth_error(error: MessagingError) -> hm::Error {
    match error {
        MessagingError::InvalidArgument(detail) => hm::Error::InvalidArgument(detail),
        MessagingError::TooLarge { limit, .. } => hm::Error::TooLarge(limit),
        MessagingError::Lost { .. } => hm::Error::Lost(error.to_string()),
        MessagingError::Unavailable { .. } => hm::Error::Unavailable(error.to_string()),
        MessagingError::TopicFull { .. } => hm::Error::TopicFull(error.to_string()),
    }
}

fn hearth_publish_error(error: PublishError) -> hm::Error {
    match error {
        PublishError::Denied(detail) => hm::Error::AccessDenied(detail),
        PublishError::NoBroker(detail) => hm::Error::Unavailable(detail),
        PublishError::Broker(error) => hearth_error(error),
    }
}

fn wasi_error(error: PublishError) -> types::Error {
    match error {
        PublishError::Denied(detail) => types::Error::PermissionDenied(detail),
        PublishError::NoBroker(detail) => types::Error::Connection(detail),
        PublishError::Broker(MessagingError::Unavailable { .. }) => {
            types::Error::Connection(match error {
                PublishError::Broker(e) => e.to_string(),
                _ => unreachable!(),
            })
        }
        PublishError::Broker(error) => types::Error::Other(error.to_string()),
    }
}

impl types::Host for MessagingView<'_> {}

impl types::HostClient for MessagingView<'_> {
    async fn connect(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ClientHandle>, types::Error>> {
        Ok(match self.broker_for_publish(Some(&name)) {
            Ok(broker) => Ok(self.table.push(ClientHandle { broker })?),
            Err(error) => Err(wasi_error(error)),
        })
    }

    async fn disconnect(
        &mut self,
        _client: Resource<ClientHandle>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(Ok(()))
    }

    async fn drop(&mut self, client: Resource<ClientHandle>) -> wasmtime::Result<()> {
        self.table.delete(client)?;
        Ok(())
    }
}

impl types::HostMessage for MessagingView<'_> {
    async fn new(&mut self, data: Vec<u8>) -> wasmtime::Result<Resource<MessageHandle>> {
        Ok(self.table.push(MessageHandle {
            data,
            ..Default::default()
        })?)
    }

    async fn topic(
        &mut self,
        message: Resource<MessageHandle>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&message)?.topic.clone())
    }

    async fn content_type(
        &mut self,
        message: Resource<MessageHandle>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&message)?.content_type.clone())
    }

    async fn set_content_type(
        &mut self,
        message: Resource<MessageHandle>,
        content_type: String,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.content_type = Some(content_type);
        Ok(())
    }

    async fn data(&mut self, message: Resource<MessageHandle>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&message)?.data.clone())
    }

    async fn set_data(
        &mut self,
        message: Resource<MessageHandle>,
        data: Vec<u8>,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.data = data;
        Ok(())
    }

    async fn metadata(
        &mut self,
        message: Resource<MessageHandle>,
    ) -> wasmtime::Result<Option<Vec<(String, String)>>> {
        let metadata = &self.table.get(&message)?.metadata;
        Ok((!metadata.is_empty()).then(|| metadata.clone()))
    }

    async fn add_metadata(
        &mut self,
        message: Resource<MessageHandle>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        let metadata = &mut self.table.get_mut(&message)?.metadata;
        match metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => metadata.push((key, value)),
        }
        Ok(())
    }

    async fn set_metadata(
        &mut self,
        message: Resource<MessageHandle>,
        meta: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.metadata = meta;
        Ok(())
    }

    async fn remove_metadata(
        &mut self,
        message: Resource<MessageHandle>,
        key: String,
    ) -> wasmtime::Result<()> {
        self.table
            .get_mut(&message)?
            .metadata
            .retain(|(k, _)| *k != key);
        Ok(())
    }

    async fn drop(&mut self, message: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(message)?;
        Ok(())
    }
}

impl producer::Host for MessagingView<'_> {
    async fn send(
        &mut self,
        client: Resource<ClientHandle>,
        topic: String,
        message: Resource<MessageHandle>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let broker = self.table.get(&client)?.broker.clone();
        let handle = self.table.delete(message)?;
        let outgoing = OutgoingMessage {
            topic,
            data: handle.data,
            headers: handle.metadata,
            content_type: handle.content_type,
            ..Default::default()
        };
        let function = self.ctx.scope.clone();
        let trace = self.ctx.trace.clone();
        Ok(Self::publish_checked(function, broker, outgoing, trace)
            .await
            .map(|_| ())
            .map_err(wasi_error))
    }
}

impl hm::Host for MessagingView<'_> {
    async fn publish(
        &mut self,
        topic: String,
        data: Vec<u8>,
        options: hm::PublishOptions,
    ) -> wasmtime::Result<Result<String, hm::Error>> {
        let broker = match self.broker_for_publish(None) {
            Ok(broker) => broker,
            Err(error) => return Ok(Err(hearth_publish_error(error))),
        };
        let outgoing = OutgoingMessage {
            topic,
            data,
            key: options.key,
            headers: options.headers,
            content_type: options.content_type,
            delay: Duration::from_millis(options.delay_ms),
            priority: options.priority,
        };
        let function = self.ctx.scope.clone();
        let trace = self.ctx.trace.clone();
        Ok(Self::publish_checked(function, broker, outgoing, trace)
            .await
            .map_err(hearth_publish_error))
    }

    async fn current(&mut self) -> wasmtime::Result<Option<hm::Delivery>> {
        Ok(self.ctx.in_hand.as_ref().map(|in_hand| {
            let d = &in_hand.delivery;
            let scope = &self.ctx.scope;
            hm::Delivery {
                id: d.id.clone(),
                topic: scope.guest_topic(&d.topic),
                group: scope.guest_topic(&in_hand.group),
                attempt: d.attempt,
                last_error: d.last_error.clone(),
                key: d.key.clone(),
                priority: d.priority,
            }
        }))
    }

    async fn extend(&mut self, visibility_ms: u64) -> wasmtime::Result<Result<(), hm::Error>> {
        let in_hand = match self.in_hand() {
            Ok(in_hand) => in_hand,
            Err(error) => return Ok(Err(error)),
        };
        let visibility = Duration::from_millis(visibility_ms.max(1));
        Ok(in_hand
            .consumer
            .extend(&in_hand.delivery.receipt, visibility)
            .await
            .map_err(hearth_error))
    }

    async fn ack(&mut self) -> wasmtime::Result<Result<(), hm::Error>> {
        let in_hand = match self.in_hand() {
            Ok(in_hand) => in_hand,
            Err(error) => return Ok(Err(error)),
        };
        let result = in_hand.consumer.ack(&in_hand.delivery.receipt).await;
        if result.is_ok() {
            in_hand.settled = Some(Settled::Acked);
        }
        Ok(result.map_err(hearth_error))
    }

    async fn nack(
        &mut self,
        delay_ms: u64,
        reason: String,
    ) -> wasmtime::Result<Result<(), hm::Error>> {
        let in_hand = match self.in_hand() {
            Ok(in_hand) => in_hand,
            Err(error) => return Ok(Err(error)),
        };
        // The trigger applies the subscription's backoff and dead-lettering:
        // record the guest's wish, and let it settle after `handle` returns.
        in_hand.settled = Some(Settled::Nacked { delay_ms, reason });
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_messaging::{MessagingLimits, SubscriptionSpec};
    use hm::Host as _;
    use producer::Host as _;
    use types::{HostClient as _, HostMessage as _};

    fn embedded(dir: &std::path::Path) -> Broker {
        let backend = hearth_messaging::embedded::EmbeddedBroker::open(&dir.join("m.redb"));
        Broker::new(
            "default",
            Arc::new(backend.unwrap()),
            MessagingLimits::default(),
        )
    }

    fn ctx(broker: &Broker, publish_topics: Option<&[&str]>) -> MessagingCtx {
        MessagingCtx {
            scope: Arc::new(MessagingScope {
                function: "producer".into(),
                identity: Identity::new("team-a", "producer").unwrap(),
                broker: Some(broker.clone()),
                brokers: BTreeMap::from([("default".to_string(), broker.clone())]),
                publish_topics: publish_topics
                    .map(|topics| topics.iter().map(|t| t.to_string()).collect()),
                other_topics: Vec::new(),
            }),
            in_hand: None,
            trace: TraceContext::default(),
        }
    }

    async fn consumer(broker: &Broker, topic: &str) -> Arc<dyn Consumer> {
        let spec = SubscriptionSpec {
            topic: topic.into(),
            group: "g".into(),
            visibility: Duration::from_secs(30),
        };
        broker.subscribe(&spec).await.unwrap()
    }

    async fn receive_one(consumer: &Arc<dyn Consumer>) -> Delivery {
        let mut got = consumer.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1, "one message");
        got.remove(0)
    }

    fn publish_options() -> hm::PublishOptions {
        hm::PublishOptions {
            key: Some("k".into()),
            headers: vec![("h".into(), "v".into())],
            content_type: None,
            delay_ms: 0,
            priority: 0,
        }
    }

    #[tokio::test]
    async fn publish_reaches_the_broker_only_for_allowed_topics() {
        let dir = tempfile::tempdir().unwrap();
        let broker = embedded(dir.path());
        let orders = consumer(&broker, "team-a.orders").await;
        let mut ctx = ctx(&broker, Some(&["orders", "audit.>"]));
        let mut table = ResourceTable::new();
        let mut view = MessagingView {
            ctx: &mut ctx,
            table: &mut table,
        };
        let id = view
            .publish("orders".into(), b"one".to_vec(), publish_options())
            .await
            .unwrap()
            .unwrap();
        let delivery = receive_one(&orders).await;
        assert_eq!(
            (delivery.id.as_str(), delivery.data.as_slice()),
            (id.as_str(), &b"one"[..])
        );
        assert_eq!(delivery.key.as_deref(), Some("k"));
        assert!(delivery.headers.contains(&("h".into(), "v".into())));
        let denied = view
            .publish("payments".into(), b"x".to_vec(), publish_options())
            .await
            .unwrap();
        assert!(
            matches!(denied, Err(hm::Error::AccessDenied(_))),
            "{denied:?}"
        );
    }

    #[tokio::test]
    async fn another_namespaces_topic_is_reached_only_when_the_policy_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let broker = embedded(dir.path());
        let theirs = consumer(&broker, "team-b.orders").await;
        let mut ctx = ctx(&broker, None);
        let mut table = ResourceTable::new();
        let mut view = MessagingView {
            ctx: &mut ctx,
            table: &mut table,
        };
        for topic in ["team-b:orders", "team-b:orders.eu"] {
            let denied = view
                .publish(topic.into(), b"x".to_vec(), publish_options())
                .await
                .unwrap();
            assert!(
                matches!(&denied, Err(hm::Error::AccessDenied(m)) if m.contains("namespace `team-b`")),
                "{denied:?}"
            );
        }
        let scope = &view.ctx.scope;
        view.ctx.scope = Arc::new(MessagingScope {
            function: scope.function.clone(),
            identity: scope.identity.clone(),
            broker: scope.broker.clone(),
            brokers: scope.brokers.clone(),
            publish_topics: None,
            other_topics: vec!["team-b:orders".into()],
        });
        view.publish("team-b:orders".into(), b"in".to_vec(), publish_options())
            .await
            .unwrap()
            .unwrap();
        let delivery = receive_one(&theirs).await;
        assert_eq!(delivery.data, b"in");
        assert_eq!(view.ctx.scope.guest_topic(&delivery.topic), "team-b:orders");
        assert_eq!(view.ctx.scope.guest_topic("team-a.orders.eu"), "orders.eu");
        assert_eq!(view.ctx.scope.broker_group("workers"), "team-a.workers");
        assert!(
            view.publish("team-b:orders.eu".into(), b"x".to_vec(), publish_options())
                .await
                .unwrap()
                .is_err(),
            "only what the policy lists"
        );
    }

    #[tokio::test]
    async fn the_standard_producer_sends_data_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let broker = embedded(dir.path());
        let events = consumer(&broker, "team-a.events").await;
        let mut ctx = ctx(&broker, None);
        let mut table = ResourceTable::new();
        let mut view = MessagingView {
            ctx: &mut ctx,
            table: &mut table,
        };
        let client = view.connect("".into()).await.unwrap().unwrap();
        let message = types::HostMessage::new(&mut view, b"hello".to_vec())
            .await
            .unwrap();
        view.add_metadata(Resource::new_borrow(message.rep()), "m".into(), "1".into())
            .await
            .unwrap();
        view.send(Resource::new_borrow(client.rep()), "events".into(), message)
            .await
            .unwrap()
            .unwrap();
        let delivery = receive_one(&events).await;
        assert_eq!(delivery.data, b"hello");
        assert!(delivery.headers.contains(&("m".into(), "1".into())));
        assert!(view.connect("elsewhere".into()).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn the_message_in_hand_is_settled_once_and_only_inside_a_handler() {
        let dir = tempfile::tempdir().unwrap();
        let broker = embedded(dir.path());
        let jobs = consumer(&broker, "team-a.jobs").await;
        let mut ctx = ctx(&broker, None);
        let mut table = ResourceTable::new();
        let mut view = MessagingView {
            ctx: &mut ctx,
            table: &mut table,
        };
        assert!(matches!(
            view.ack().await.unwrap(),
            Err(hm::Error::NoMessage)
        ));
        view.publish("jobs".into(), b"work".to_vec(), publish_options())
            .await
            .unwrap()
            .unwrap();
        let delivery = receive_one(&jobs).await;
        view.ctx.in_hand = Some(InHand {
            consumer: jobs.clone(),
            delivery,
            group: "g".into(),
            settled: None,
        });
        assert_eq!(view.current().await.unwrap().unwrap().topic, "jobs");
        view.ack().await.unwrap().unwrap();
        assert_eq!(
            view.ctx.in_hand.as_ref().unwrap().settled,
            Some(Settled::Acked)
        );
        assert!(
            matches!(
                view.nack(0, "late".into()).await.unwrap(),
                Err(hm::Error::NoMessage)
            ),
            "a settled message cannot be settled again"
        );
    }
}
