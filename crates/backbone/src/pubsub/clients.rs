//! Builds the official clients, pointed at the emulator when
//! `PUBSUB_EMULATOR_HOST` is set (the crates do not read it themselves).

use google_cloud_auth::credentials::{anonymous, Credentials};
use google_cloud_pubsub::client::{BasePublisher, Subscriber, SubscriptionAdmin, TopicAdmin};

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `http://host:port` for the emulator; `None` for Google Cloud.
    pub url: Option<String>,
}

impl Endpoint {
    /// `host:port` (as in `PUBSUB_EMULATOR_HOST`) or a full URL.
    pub fn from_emulator_host(host: Option<&str>) -> Self {
        Self {
            url: host.filter(|h| !h.is_empty()).map(|h| {
                if h.starts_with("http://") || h.starts_with("https://") {
                    h.to_string()
                } else {
                    format!("http://{h}")
                }
            }),
        }
    }

    /// The emulator takes no credentials; without anonymous ones the client
    /// would wait about a minute for a metadata server that is not there.
    fn credentials(&self) -> Option<Credentials> {
        self.url.as_ref().map(|_| anonymous::Builder::new().build())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the Pub/Sub {client} client: {source}")]
pub struct ClientError {
    pub client: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    client: &'static str,
) -> impl Fn(E) -> ClientError {
    move |e| ClientError {
        client,
        source: Box::new(e),
    }
}

/// Applies endpoint and credentials to any of the crate's client builders.
macro_rules! configure {
    ($builder:expr, $ep:expr) => {{
        let mut b = $builder;
        if let Some(url) = &$ep.url {
            b = b.with_endpoint(url.clone());
        }
        if let Some(c) = $ep.credentials() {
            b = b.with_credentials(c);
        }
        b
    }};
}

pub async fn base_publisher(ep: &Endpoint) -> Result<BasePublisher, ClientError> {
    configure!(BasePublisher::builder(), ep)
        .build()
        .await
        .map_err(err("publisher"))
}

pub async fn subscriber(ep: &Endpoint) -> Result<Subscriber, ClientError> {
    configure!(Subscriber::builder(), ep)
        .build()
        .await
        .map_err(err("subscriber"))
}

pub async fn topic_admin(ep: &Endpoint) -> Result<TopicAdmin, ClientError> {
    configure!(TopicAdmin::builder(), ep)
        .build()
        .await
        .map_err(err("topic admin"))
}

pub async fn subscription_admin(ep: &Endpoint) -> Result<SubscriptionAdmin, ClientError> {
    configure!(SubscriptionAdmin::builder(), ep)
        .build()
        .await
        .map_err(err("subscription admin"))
}
