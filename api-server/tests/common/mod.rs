//! What the api-server's tests against the rig share: a unique database and topic, a keys file
//! with two tenants, the real `api-server` binary as a child process, and an HTTP client.
#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use e2e::state::{self, Versions};
use e2e::{kafka, rig::rig, unique, wait};
use pipeline_contract::MessageEvent;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const KEY_A: &str = "test-key-tenant-a-5f0c";
pub const KEY_B: &str = "test-key-tenant-b-91d2";
pub const TENANT_A: &str = "tenant-a";
pub const TENANT_B: &str = "tenant-b";

/// A database, topic and keys file unique to one test.
pub struct Setup {
    pub database: String,
    pub topic: String,
    pub keys_file: PathBuf,
    pub search: Option<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Setup {
    pub async fn new(prefix: &str) -> Self {
        let topic = unique(&format!("{prefix}-events"));
        kafka::create_topic(&topic, 3).await;
        let dir = std::env::temp_dir().join(unique("api-keys"));
        std::fs::create_dir_all(&dir).unwrap();
        let keys_file = dir.join("keys.yaml");
        let yaml = format!(
            "- name: app-a\n  tenant: {TENANT_A}\n  sha256: {}\n- name: app-b\n  tenant: {TENANT_B}\n  sha256: {}\n",
            hex(&Sha256::digest(KEY_A.as_bytes())),
            hex(&Sha256::digest(KEY_B.as_bytes())),
        );
        std::fs::write(&keys_file, yaml).unwrap();
        Self {
            database: unique(prefix).replace('-', "_"),
            topic,
            keys_file,
            search: None,
        }
    }

    /// Installs a fresh index (one shard, no replicas) in the rig's search engine and points the
    /// api-server at its alias; returns the alias.
    pub async fn with_search_index(&mut self, prefix: &str) -> String {
        self.with_search_index_settings(
            prefix,
            pipeline_contract::search::IndexSettings {
                replicas: 0,
                ..Default::default()
            },
        )
        .await
    }

    /// [`Setup::with_search_index`] with `settings`.
    pub async fn with_search_index_settings(
        &mut self,
        prefix: &str,
        settings: pipeline_contract::search::IndexSettings,
    ) -> String {
        use pipeline_contract::install::{SearchEndpoint, install};
        use pipeline_contract::search::IndexLayout;
        let layout = IndexLayout::new(unique(prefix)).unwrap();
        install(
            &reqwest::Client::new(),
            &SearchEndpoint::new(rig().search_url()),
            &layout,
            &settings,
        )
        .await
        .expect("index installed");
        let alias = layout.alias().to_owned();
        self.search = Some((rig().search_url().to_owned(), alias.clone()));
        alias
    }

    /// Every record the api-server published, decoded.
    pub fn events(&self) -> Vec<(kafka::TopicRecord, MessageEvent)> {
        kafka::read_topic(&self.topic)
            .into_iter()
            .map(|r| {
                let event = MessageEvent::decode(&r.payload).expect("a valid event");
                (r, event)
            })
            .collect()
    }

    /// Per message id, the highest version published and whether it was a delete.
    pub fn published(&self) -> Versions {
        state::newest(self.events().iter().map(|(_, event)| event))
    }

    /// Per message id, its version in MongoDB and whether it is a tombstone.
    pub async fn stored(&self) -> Versions {
        state::stored(&self.database).await
    }
}

/// The `api-server` binary running as a child process.
pub struct Server {
    child: Child,
    pub base: String,
    /// Where its `/metrics` is (a port apart from the API's).
    pub metrics: String,
    pub log: PathBuf,
}

impl Server {
    pub async fn start(setup: &Setup) -> Self {
        Self::start_with(setup, &[]).await
    }

    /// Starts the binary with the setup's settings plus `extra` env vars, and waits for `/ready`.
    pub async fn start_with(setup: &Setup, extra: &[(&str, &str)]) -> Self {
        let server = Self::launch(setup, extra);
        server.wait_ready().await;
        server
    }

    /// Starts the binary with the setup's settings plus `extra` env vars, without waiting.
    pub fn launch(setup: &Setup, extra: &[(&str, &str)]) -> Self {
        let port = e2e::free_port();
        let metrics_port = e2e::free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("api-server")));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_api-server"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("MONGODB_URI", rig().mongodb_uri())
            .env("MONGODB_DATABASE", &setup.database)
            // Unchecked: some tests start servers while Kafka is stopped (Setup checked it).
            .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka_servers())
            .env("KAFKA_TOPIC", &setup.topic)
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file));
        if !extra
            .iter()
            .any(|(k, _)| *k == "API_INSECURE_TENANT_HEADER")
        {
            command.env("API_KEYS_FILE", &setup.keys_file);
        }
        if let Some((url, alias)) = &setup.search {
            command
                .env("ELASTICSEARCH_URL", url)
                .env("ELASTICSEARCH_ALIAS", alias);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("api-server starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            log,
        }
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let url = format!("{}/ready", self.base);
        let log = self.log.clone();
        wait::until(
            &format!("api-server ready (log: {})", log.display()),
            Duration::from_secs(30),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    (r.status() == StatusCode::OK).then_some(())
                }
            },
        )
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub fn client(&self, key: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            key: Some(key.to_owned()),
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            key: None,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers, and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status; returns the body.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert_eq!(self.body["status"], json!(status), "{self:?}");
        assert!(self.body["title"].is_string(), "{self:?}");
        assert!(self.body["type"].is_string(), "{self:?}");
        &self.body
    }
}

/// An HTTP client of the API with one tenant's key.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub key: Option<String>,
}

impl Api {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("the api-server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    /// Creates a message and asserts the 201; returns its body.
    pub async fn create(&self, conversation: Uuid, content: &str) -> Value {
        let reply = self
            .send(
                Method::POST,
                "/v1/messages",
                Some(&json!({
                    "conversationId": conversation,
                    "senderId": Uuid::new_v4(),
                    "content": content,
                    "metadata": {"k": "v"},
                })),
                &[],
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body
    }

    pub async fn patch(&self, id: &str, body: &Value, if_match: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = if_match.map(|m| ("if-match", m)).into_iter().collect();
        self.send(
            Method::PATCH,
            &format!("/v1/messages/{id}"),
            Some(body),
            &headers,
        )
        .await
    }

    pub async fn delete(&self, id: &str, if_match: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = if_match.map(|m| ("if-match", m)).into_iter().collect();
        self.send(
            Method::DELETE,
            &format!("/v1/messages/{id}"),
            None,
            &headers,
        )
        .await
    }
}

/// Waits until every message in MongoDB is on the topic at its MongoDB version (and every
/// tombstone as a delete); returns what was published.
pub async fn converged(setup: &Setup, timeout: Duration) -> Versions {
    let stored = setup.stored().await;
    wait::until("every stored change published", timeout, || {
        let stored = stored.clone();
        async move {
            let published = tokio::task::block_in_place(|| setup.published());
            (published == stored).then_some(published)
        }
    })
    .await
}

pub use e2e::traffic::Acked;

/// [`e2e::traffic::writer`] as tenant A.
pub async fn writer(
    bases: Arc<RwLock<Vec<String>>>,
    acked: Acked,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    pause: Duration,
) {
    e2e::traffic::writer(bases, KEY_A.to_owned(), acked, stop, done, pause).await;
}

fn devstack(script: &str, service: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../devstack")
        .join(script);
    let status = Command::new("bash")
        .arg(&path)
        .arg(service)
        .status()
        .expect("devstack runs");
    assert!(status.success(), "devstack/{script} {service} failed");
}

/// The rig's Kafka stopped; started again when dropped, whatever happened in between. A test
/// that stops Kafka lives in a test binary of its own (cargo runs test binaries one after
/// another) and runs its tests one at a time.
pub struct KafkaDown;

impl KafkaDown {
    pub fn stop() -> Self {
        devstack("down", "kafka");
        Self
    }
}

impl Drop for KafkaDown {
    fn drop(&mut self) {
        devstack("up", "kafka");
    }
}

/// A value of the api-server's `/metrics` (first sample with this name and labels).
pub async fn metric(server: &Server, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
