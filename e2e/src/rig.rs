use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const HOW_TO_START: &str = "start it with `make up` (or `devstack/up`)";

/// The endpoints `devstack/up` wrote to its env file. Variables already set in the environment
/// win, so a test run can be pointed at other servers.
#[derive(Debug, Clone)]
pub struct Rig {
    vars: HashMap<String, String>,
    env_file: PathBuf,
}

/// The env file: `$MP_RIG_ENV`, else `$MP_CACHE_DIR/run/rig.env` (default cache
/// `~/.cache/message-pipeline`).
pub fn env_file() -> PathBuf {
    if let Ok(path) = std::env::var("MP_RIG_ENV") {
        return path.into();
    }
    let cache = std::env::var("MP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/message-pipeline")
        });
    cache.join("run/rig.env")
}

/// The rig, loaded once per test binary.
pub fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(Rig::load)
}

impl Rig {
    fn load() -> Self {
        let env_file = env_file();
        let mut vars: HashMap<String, String> = match std::fs::read_to_string(&env_file) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        // The worker image `make image` imported into the node (devstack/image writes it).
        if let Some(dir) = env_file.parent()
            && let Ok(text) = std::fs::read_to_string(dir.join("image.env"))
        {
            vars.extend(
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())),
            );
        }
        for key in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_POD_BOOTSTRAP_SERVERS",
            "MONGODB_URI",
            "MONGODB_POD_URI",
            "ELASTICSEARCH_URL",
            "ELASTICSEARCH_POD_URL",
            "KUBECONFIG",
            "KUBECTL",
            "HELM",
            "SCHEMATHESIS",
            "BENTHOS",
            "RIG_ADDRESS",
            "WORKER_IMAGE",
            "WORKER_IMAGE_NEXT",
            "SERVICE_ACCESS",
        ] {
            if let Ok(value) = std::env::var(key) {
                vars.insert(key.to_owned(), value);
            }
        }
        Self { vars, env_file }
    }

    fn var(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "the rig is not running: {key} is not in {} nor in the environment; {HOW_TO_START}",
                self.env_file.display()
            )
        })
    }

    /// The rig's address on its bridge: pods reach this machine there.
    pub fn rig_address(&self) -> &str {
        self.var("RIG_ADDRESS")
    }

    /// How this machine reaches a Service of the cluster: `SERVICE_ACCESS` of the env file,
    /// `cluster-ip` unless set (the rig's machine is its node, kube-proxy's rules route a
    /// ClusterIP); `port-forward` where the node is elsewhere (kind: e2e/kind/run.sh sets it).
    pub fn service_access(&self) -> ServiceAccess {
        match self.vars.get("SERVICE_ACCESS").map(String::as_str) {
            None | Some("cluster-ip") => ServiceAccess::ClusterIp,
            Some("port-forward") => ServiceAccess::PortForward,
            Some(other) => panic!(
                "SERVICE_ACCESS={other} (from {} or the environment) is neither `cluster-ip` nor `port-forward`",
                self.env_file.display()
            ),
        }
    }

    /// The name of the rig's Kubernetes node (pods run there).
    pub fn node_name(&self) -> &str {
        self.var("NODE_NAME")
    }

    /// Kafka bootstrap servers as the rig wrote them, unchecked (for a process started while a
    /// test has Kafka stopped).
    pub fn kafka_servers(&self) -> &str {
        self.var("KAFKA_BOOTSTRAP_SERVERS")
    }

    /// Kafka bootstrap servers, after checking the first one accepts connections.
    pub fn kafka(&self) -> &str {
        let servers = self.var("KAFKA_BOOTSTRAP_SERVERS");
        let first = servers.split(',').next().unwrap_or_default();
        ensure_reachable("Kafka", first);
        servers
    }

    /// The rig's CA (PEM), which every secured listener's certificate chains to.
    pub fn ca_cert(&self) -> &str {
        self.var("RIG_CA_CERT")
    }

    /// Kafka's SASL_SSL listener on loopback (SCRAM-SHA-512, ACLs of devstack/kafka/acls), after
    /// checking it accepts connections.
    pub fn kafka_secure(&self) -> &str {
        let servers = self.var("KAFKA_SECURE_BOOTSTRAP_SERVERS");
        ensure_reachable("Kafka's secured listener", servers);
        servers
    }

    /// The secured search engine (HTTPS, the rig's CA, basic authentication), after checking it
    /// accepts connections.
    pub fn search_secure_url(&self) -> &str {
        let url = self.var("ELASTICSEARCH_SECURE_URL");
        ensure_reachable(
            "the secured search engine",
            url.trim_start_matches("https://").trim_end_matches('/'),
        );
        url
    }

    /// The password of one of the secured search engine's users (`admin`, `api`, `indexer`,
    /// `operator`, `audit`; the user is `mp-<principal>`).
    pub fn search_password(&self, principal: &str) -> &str {
        self.var(&format!("SEARCH_PASSWORD_{}", principal.to_uppercase()))
    }

    /// The password of one of the secured listener's principals (`api`, `indexer`, `replay`,
    /// `operator`, `audit`; the user is `mp-<principal>`).
    pub fn kafka_password(&self, principal: &str) -> &str {
        self.var(&format!("KAFKA_PASSWORD_{}", principal.to_uppercase()))
    }

    /// The secured FerretDB's connection string (TLS listener, PLAIN authentication checked by
    /// PostgreSQL): as `mp-<principal>` with `password` when given, trusting the CA file `ca`
    /// when given (otherwise the system roots only), after checking it accepts connections.
    pub fn mongodb_secure_uri(&self, login: Option<(&str, &str)>, ca: Option<&str>) -> String {
        let base = self.var("MONGODB_SECURE_URI");
        let host = base.trim_start_matches("mongodb://").trim_end_matches('/');
        ensure_reachable("the secured MongoDB (FerretDB)", host);
        let mut uri = match login {
            // The rig's passwords are hex: nothing to percent-encode.
            Some((principal, password)) => {
                format!("mongodb://mp-{principal}:{password}@{host}/?tls=true&authMechanism=PLAIN")
            }
            None => format!("mongodb://{host}/?tls=true"),
        };
        if let Some(ca) = ca {
            uri.push_str("&tlsCAFile=");
            uri.push_str(ca);
        }
        uri
    }

    /// The password of one of the secured FerretDB's principals (`api`, `audit`).
    pub fn mongodb_password(&self, principal: &str) -> &str {
        self.var(&format!("MONGODB_PASSWORD_{}", principal.to_uppercase()))
    }

    /// The addresses of the rig's services as pods on its node reach them (the rig's bridge
    /// address), for the endpoints of a MessagePipeline whose workers run as pods.
    pub fn pod_endpoints(&self) -> PodEndpoints<'_> {
        PodEndpoints {
            kafka: self.var("KAFKA_POD_BOOTSTRAP_SERVERS"),
            mongodb_uri: self.var("MONGODB_POD_URI"),
            search_url: self.var("ELASTICSEARCH_POD_URL").trim_end_matches('/'),
        }
    }

    /// The secured listeners as pods reach them (SASL_SSL Kafka, the TLS FerretDB without
    /// credentials in the URI, the HTTPS search engine), all with certificates from the rig's CA.
    pub fn secure_pod_endpoints(&self) -> PodEndpoints<'_> {
        PodEndpoints {
            kafka: self.var("KAFKA_SECURE_POD_BOOTSTRAP_SERVERS"),
            mongodb_uri: self.var("MONGODB_SECURE_URI"),
            search_url: self
                .var("ELASTICSEARCH_SECURE_POD_URL")
                .trim_end_matches('/'),
        }
    }

    /// The worker image on the rig's node, and a second name of the same image (for a change of
    /// a pipeline's image), as `make image` imported them.
    pub fn worker_image(&self) -> (&str, &str) {
        let image_var = |key: &str| {
            self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
                panic!("the worker image is not on the rig's node: {key} is not in image.env next to {}; run `make image`", self.env_file.display())
            })
        };
        (image_var("WORKER_IMAGE"), image_var("WORKER_IMAGE_NEXT"))
    }

    /// The MongoDB connection string, after checking its host accepts connections.
    pub fn mongodb_uri(&self) -> &str {
        let uri = self.var("MONGODB_URI");
        let host = uri
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?', ',']).next())
            .map(|h| h.rsplit('@').next().unwrap_or(h))
            .unwrap_or_default();
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:27017")
        };
        ensure_reachable("MongoDB", &host);
        uri
    }

    /// The search engine's base URL, after checking it accepts connections.
    pub fn search_url(&self) -> &str {
        let url = self.var("ELASTICSEARCH_URL").trim_end_matches('/');
        let authority = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or_default();
        let default_port = if url.starts_with("https") { 443 } else { 80 };
        let host = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        ensure_reachable("the search engine", &host);
        url
    }

    /// The OTLP/HTTP base URL of the rig's collector (Jaeger), which pods and this machine's
    /// processes both reach, after checking it accepts connections.
    pub fn otel_collector_url(&self) -> &str {
        let url = self.var("OTEL_COLLECTOR_URL").trim_end_matches('/');
        ensure_reachable("the trace collector", url.trim_start_matches("http://"));
        url
    }

    /// The base URL of Jaeger's query API (on loopback), after checking it accepts connections.
    pub fn jaeger_query_url(&self) -> &str {
        let url = self.var("JAEGER_QUERY_URL").trim_end_matches('/');
        ensure_reachable(
            "the trace store's query API",
            url.trim_start_matches("http://"),
        );
        url
    }
}

/// See [`Rig::service_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAccess {
    /// `http://<ClusterIP>`: this machine is the node.
    ClusterIp,
    /// Through the API server to the Service's ready endpoints ([`crate::forward`]).
    PortForward,
}

/// See [`Rig::pod_endpoints`].
#[derive(Debug, Clone, Copy)]
pub struct PodEndpoints<'a> {
    pub kafka: &'a str,
    pub mongodb_uri: &'a str,
    pub search_url: &'a str,
}

impl Rig {
    /// Creates a namespace named `<prefix>-<unique>` on the rig's API server and waits until its
    /// `default` ServiceAccount exists (Pods are refused before: the ServiceAccount admission
    /// plugin is on); returns its name.
    pub async fn create_namespace(&self, client: &kube::Client, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::Namespace;
        let name = crate::unique(prefix);
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("a namespace");
        kube::Api::<Namespace>::all(client.clone())
            .create(&kube::api::PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client.clone(), &name);
        crate::wait::until(
            "the namespace's default ServiceAccount",
            Duration::from_secs(30),
            || async { accounts.get_opt("default").await.ok().flatten().map(|_| ()) },
        )
        .await;
        name
    }

    /// Deletes a namespace (best effort: the rig is reset by `devstack/down`).
    pub async fn delete_namespace(&self, client: &kube::Client, name: &str) {
        use k8s_openapi::api::core::v1::Namespace;
        let _ = kube::Api::<Namespace>::all(client.clone())
            .delete(name, &kube::api::DeleteParams::default())
            .await;
    }

    /// A client of the rig's Kubernetes API server, as the admin identity of its kubeconfig.
    pub async fn kube_client(&self) -> kube::Client {
        let config = self.kube_config().await;
        let server = config
            .cluster_url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        ensure_reachable("the Kubernetes API server", &server);
        kube::Client::try_from(config).expect("Kubernetes client")
    }

    /// The client configuration of the rig's kubeconfig (admin identity), for a test that
    /// reaches the API server another way (through a [`crate::proxy::TcpProxy`]).
    pub async fn kube_config(&self) -> kube::Config {
        let path = self.var("KUBECONFIG");
        let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap_or_else(|e| {
            panic!("the rig is not running: cannot read kubeconfig {path}: {e}; {HOW_TO_START}")
        });
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a usable kubeconfig")
    }

    /// Path of the rig's kubeconfig (admin identity), for child processes.
    pub fn kubeconfig(&self) -> &str {
        self.var("KUBECONFIG")
    }

    /// `kubectl` of the rig's Kubernetes release, pointed at its API server.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.var("KUBECTL"));
        command.env("KUBECONFIG", self.var("KUBECONFIG"));
        command
    }

    /// `helm` (v3, built by `devstack/up`), pointed at the rig's API server for the commands that
    /// talk to one; `helm template` does not.
    pub fn helm(&self) -> std::process::Command {
        let mut command = self.tool("HELM", "helm is not built", "it builds helm once");
        command.env("KUBECONFIG", self.var("KUBECONFIG"));
        command
    }

    /// `schemathesis` (from PyPI into a virtualenv by `devstack/up`).
    pub fn schemathesis(&self) -> std::process::Command {
        self.tool(
            "SCHEMATHESIS",
            "schemathesis is not installed",
            "it installs schemathesis once",
        )
    }

    /// `benthos` (Benthos v4, built from the Go module proxy by `devstack/up`), the peer of
    /// `make bench-peers`.
    pub fn benthos(&self) -> std::process::Command {
        self.tool("BENTHOS", "benthos is not built", "it builds benthos once")
    }

    /// The client tool whose path `devstack/up` wrote as `key`; panics saying how to get it.
    fn tool(&self, key: &str, missing: &str, how: &str) -> std::process::Command {
        let path = self.vars.get(key).unwrap_or_else(|| {
            panic!(
                "{missing}: {key} is not in {} nor in the environment; {HOW_TO_START} ({how})",
                self.env_file.display()
            )
        });
        std::process::Command::new(path)
    }
}

fn ensure_reachable(service: &str, address: &str) {
    let reachable = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if !reachable {
        panic!(
            "the rig is not running: {service} at {address} does not accept connections; {HOW_TO_START}"
        );
    }
}
