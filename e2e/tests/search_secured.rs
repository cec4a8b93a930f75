//! The rig's secured search engine does what the workers' least-privilege setup relies on:
//! HTTPS with a certificate from the rig's CA, basic authentication, and a role per principal on
//! indices named `secure-*` (devstack/opensearch-secure/roles.yml). Every request goes through
//! `search_client::SearchAccess`, the workers' own client: the CA file the operator mounts is
//! trusted, a wrong password is a 401, an engine whose CA is not given fails the handshake, and
//! each principal may do its part and no more.

use std::time::Duration;

use e2e::{rig::rig, unique};
use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search_client::SearchAccess;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn access(principal: &str, password: &str, ca: bool) -> SearchAccess {
    SearchAccess {
        search_username: Some(format!("mp-{principal}")),
        search_password: Some(password.to_owned()),
        search_ca_cert: ca.then(|| rig().ca_cert().into()),
    }
}

/// (client, endpoint) as `mp-<principal>` trusting the rig's CA.
fn as_principal(principal: &str) -> (reqwest::Client, SearchEndpoint) {
    let a = access(principal, rig().search_password(principal), true);
    (
        a.http_client(Duration::from_secs(10)).unwrap(),
        a.endpoint(rig().search_secure_url()),
    )
}

async fn status(
    principal: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> StatusCode {
    let (http, endpoint) = as_principal(principal);
    let mut request = endpoint.request(&http, method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("an answer").status()
}

#[tokio::test]
async fn each_principal_authenticates_through_the_ca_file_and_gets_its_role() {
    for principal in ["admin", "api", "indexer", "operator", "audit"] {
        let (http, endpoint) = as_principal(principal);
        let info: serde_json::Value = endpoint
            .request(&http, Method::GET, "/_plugins/_security/authinfo")
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["user_name"], format!("mp-{principal}"), "{info}");
    }
}

#[tokio::test]
async fn each_principal_may_do_its_part_and_no_more() {
    let index = unique("secure-idx");
    let other = unique("other-idx");
    let doc = json!({"content": "x", "deleted": false});
    // The operator creates the pipeline's index, not another one.
    assert_eq!(
        status("operator", Method::PUT, &format!("/{index}"), None).await,
        StatusCode::OK
    );
    assert_eq!(
        status("operator", Method::PUT, &format!("/{other}"), None).await,
        StatusCode::FORBIDDEN
    );
    // The indexer writes it; the api-server and the audit job may not.
    let put = format!("/{index}/_doc/1?refresh=true");
    assert_eq!(
        status("indexer", Method::PUT, &put, Some(doc.clone())).await,
        StatusCode::CREATED
    );
    for reader in ["api", "audit"] {
        assert_eq!(
            status(reader, Method::PUT, &put, Some(doc.clone())).await,
            StatusCode::FORBIDDEN,
            "{reader} wrote"
        );
        assert_eq!(
            status(
                reader,
                Method::POST,
                &format!("/{index}/_search"),
                Some(json!({}))
            )
            .await,
            StatusCode::OK,
            "{reader} searched"
        );
    }
    // Nobody but the admin touches what is not secure-*.
    assert_eq!(
        status("admin", Method::PUT, &format!("/{other}"), None).await,
        StatusCode::OK
    );
    for principal in ["api", "indexer", "audit"] {
        assert_eq!(
            status(
                principal,
                Method::POST,
                &format!("/{other}/_search"),
                Some(json!({}))
            )
            .await,
            StatusCode::FORBIDDEN,
            "{principal} searched {other}"
        );
    }
    for i in [&index, &other] {
        assert_eq!(
            status("admin", Method::DELETE, &format!("/{i}"), None).await,
            StatusCode::OK
        );
    }
}

/// `GET /` through `a`.
async fn root(a: &SearchAccess) -> reqwest::Result<reqwest::Response> {
    a.endpoint(rig().search_secure_url())
        .request(
            &a.http_client(Duration::from_secs(10)).unwrap(),
            Method::GET,
            "/",
        )
        .send()
        .await
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_401() {
    let response = root(&access("indexer", "not-the-password", true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_the_ca_file_the_engines_certificate_is_not_trusted() {
    let error = root(&access("indexer", rig().search_password("indexer"), false))
        .await
        .expect_err("an engine whose CA is not trusted");
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(error.is_connect(), "{chain}");
    assert!(
        chain.contains("certificate") || chain.contains("UnknownIssuer"),
        "{chain}"
    );
}
