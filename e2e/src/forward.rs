//! A Service reached from a machine that is not the cluster's node (kind on a Docker host): a
//! local listener whose every connection is port-forwarded through the API server to one ready
//! endpoint of the Service, picked at random from its EndpointSlices as kube-proxy would pick
//! one. A killed pod breaks only the connections it held; the next connection goes to a pod
//! that is ready then, so writers go on through a rollout or a kill as they do through a
//! ClusterIP.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use tokio::net::{TcpListener, TcpStream};

/// See the module documentation. Stops listening when dropped.
#[derive(Debug)]
pub struct ServiceForward {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceForward {
    /// Forwards `127.0.0.1:<some port>` to the endpoints of `service`'s port `port`.
    pub async fn start(client: kube::Client, namespace: &str, service: &str, port: i32) -> Self {
        let target = Target {
            slices: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client.clone(), namespace),
            service: service.to_owned(),
            port_name: port_name(&Api::namespaced(client, namespace), service, port).await,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let local = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move { target.forward(connection).await });
            }
        });
        Self { local, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local)
    }
}

/// The name of the Service's port `port` (`None` when it has none: then its only port).
async fn port_name(services: &Api<Service>, service: &str, port: i32) -> Option<String> {
    let found = services
        .get(service)
        .await
        .unwrap_or_else(|e| panic!("reading Service {service}: {e}"));
    let ports = found.spec.and_then(|s| s.ports).unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("Service {service} has no port {port}: {ports:?}"));
    port.name.clone()
}

#[derive(Clone)]
struct Target {
    slices: Api<EndpointSlice>,
    pods: Api<Pod>,
    service: String,
    port_name: Option<String>,
}

impl Target {
    /// The ready endpoints of the Service now: (pod, container port).
    async fn ready_endpoints(&self) -> Vec<(String, u16)> {
        let Ok(slices) = self
            .slices
            .list(
                &ListParams::default()
                    .labels(&format!("kubernetes.io/service-name={}", self.service)),
            )
            .await
        else {
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        for slice in slices.items {
            let Some(port) = slice
                .ports
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.name == self.port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                let pod = endpoint
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name);
                if let (true, Some(pod)) = (ready, pod) {
                    endpoints.push((pod, port));
                }
            }
        }
        endpoints
    }

    /// One connection: to a ready endpoint picked at random, or closed at once when there is
    /// none (as a Service without endpoints refuses it).
    async fn forward(&self, mut connection: TcpStream) {
        let endpoints = self.ready_endpoints().await;
        if endpoints.is_empty() {
            return;
        }
        let (pod, port) = &endpoints[fastrand::usize(0..endpoints.len())];
        let Ok(mut forwarder) = self.pods.portforward(pod, &[*port]).await else {
            return;
        };
        let Some(mut upstream) = forwarder.take_stream(*port) else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut connection, &mut upstream).await;
        drop(upstream);
        let _ = forwarder.join().await;
    }
}
