//! Installs the index layout of [`crate::search`] on a search engine, idempotently.
//!
//! Order: detect the engine (`GET /`), put the template if it is missing or differs (so drift is
//! reverted and an unchanged template is not rewritten), then make sure the alias exists: create
//! `<alias>-000001` with the alias as its write alias, or add the alias to that index if it exists
//! without it. An alias that already exists is never moved, whichever indices it points at.
//! The operator calls this in production; tests and the demo call it directly.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::search::{
    EngineInfo, IndexLayout, IndexSettings, UnsupportedEngine, index_template, mapping_matches,
    template_matches,
};

/// Where the engine is and how to authenticate: every request any component sends to the search
/// engine is built by [`SearchEndpoint::request`].
#[derive(Debug, Clone)]
pub struct SearchEndpoint {
    base_url: String,
    basic_auth: Option<(String, String)>,
}

impl SearchEndpoint {
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            base_url,
            basic_auth: None,
        }
    }

    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request to `path` (starting with `/`) with this endpoint's credentials.
    pub fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = http.request(method, format!("{}{path}", self.base_url));
        match &self.basic_auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }
}

/// What happened to one part of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// What the installer found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub engine: EngineInfo,
    pub template: Change,
    /// `Created` when this run created `<alias>-000001`.
    pub first_index: Change,
    /// `Created` when this run added the alias; `Unchanged` when it already existed.
    pub alias: Change,
    /// The indices the alias points at after the run.
    pub alias_indices: Vec<String>,
}

impl InstallReport {
    /// Whether the run changed anything on the engine.
    pub fn changed(&self) -> bool {
        [self.template, self.first_index, self.alias]
            .iter()
            .any(|c| *c != Change::Unchanged)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{step}: request to the search engine failed: {source}")]
    Request {
        step: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{step}: search engine answered {status}: {body}")]
    Status {
        step: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error(transparent)]
    UnsupportedEngine(#[from] UnsupportedEngine),
    #[error("alias {alias:?} cannot be created: a concrete index has that name")]
    AliasTakenByIndex { alias: String },
}

impl InstallError {
    /// The refusal this failure is: credentials (401), a role (403), an untrusted certificate.
    pub fn cause(&self) -> Option<crate::access::Cause> {
        match self {
            Self::Request { source, .. } => crate::access::search_error_cause(source),
            Self::Status { status, .. } => crate::access::search_status_cause(status.as_u16()),
            _ => None,
        }
    }
}

struct Engine<'a> {
    client: &'a reqwest::Client,
    endpoint: &'a SearchEndpoint,
}

impl Engine<'_> {
    /// Sends a request; returns the status and the JSON body (Null when empty or not JSON).
    async fn send(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), InstallError> {
        let path = format!("/{}", path.trim_start_matches('/'));
        let mut request = self.endpoint.request(self.client, method, &path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let request_error = |source| InstallError::Request { step, source };
        let response = request.send().await.map_err(request_error)?;
        let status = response.status();
        let text = response.text().await.map_err(request_error)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 429) {
            return Err(InstallError::Status {
                step,
                status,
                body: text,
            });
        }
        Ok((status, value))
    }

    async fn expect_ok(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, InstallError> {
        match self.send(step, method, path, body).await? {
            (status, value) if status.is_success() => Ok(value),
            (status, value) => Err(InstallError::Status {
                step,
                status,
                body: value.to_string(),
            }),
        }
    }
}

/// Installs template, first index and write alias. Safe to run any number of times, and
/// concurrently with itself: a second run against an unchanged engine changes nothing.
pub async fn install(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
    settings: &IndexSettings,
) -> Result<InstallReport, InstallError> {
    let engine = Engine { client, endpoint };
    let (info, template) = template_step(&engine, layout, settings).await?;
    let (first_index, alias, alias_indices) = ensure_alias(&engine, layout).await?;
    Ok(InstallReport {
        engine: info,
        template,
        first_index,
        alias,
        alias_indices,
    })
}

/// [`install`] for a layout that had its index: the template only. A missing alias is not
/// made again (an empty first index would hide that the documents are gone); the report's
/// `alias_indices` is then empty, and a rebuild fills the next generation.
pub async fn install_template(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
    settings: &IndexSettings,
) -> Result<InstallReport, InstallError> {
    let engine = Engine { client, endpoint };
    let (info, template) = template_step(&engine, layout, settings).await?;
    Ok(InstallReport {
        engine: info,
        template,
        first_index: Change::Unchanged,
        alias: Change::Unchanged,
        alias_indices: alias_indices(&engine, layout).await?.unwrap_or_default(),
    })
}

/// The engine's kind, and the template put for it.
async fn template_step(
    engine: &Engine<'_>,
    layout: &IndexLayout,
    settings: &IndexSettings,
) -> Result<(EngineInfo, Change), InstallError> {
    let info = EngineInfo::from_root(
        &engine
            .expect_ok("detect engine", Method::GET, "/", None)
            .await?,
    )?;
    let template = put_template(
        engine,
        layout,
        &index_template(layout, info.distribution, settings),
    )
    .await?;
    Ok((info, template))
}

/// The template as `wanted`, put only when it is missing or differs.
async fn put_template(
    engine: &Engine<'_>,
    layout: &IndexLayout,
    wanted: &Value,
) -> Result<Change, InstallError> {
    let template_path = format!("_index_template/{}", layout.template_name());
    let template = match engine
        .send("read template", Method::GET, &template_path, None)
        .await?
    {
        (StatusCode::NOT_FOUND, _) => Change::Created,
        (status, body) if status.is_success() => {
            let installed = &body["index_templates"][0]["index_template"];
            if template_matches(installed, wanted) {
                Change::Unchanged
            } else {
                Change::Updated
            }
        }
        (status, body) => {
            return Err(InstallError::Status {
                step: "read template",
                status,
                body: body.to_string(),
            });
        }
    };
    if template != Change::Unchanged {
        engine
            .expect_ok("put template", Method::PUT, &template_path, Some(wanted))
            .await?;
    }

    Ok(template)
}

/// The write alias on the first index, creating either when missing; returns what changed and
/// the indices the alias points at.
async fn ensure_alias(
    engine: &Engine<'_>,
    layout: &IndexLayout,
) -> Result<(Change, Change, Vec<String>), InstallError> {
    let mut first_index = Change::Unchanged;
    let mut alias = Change::Unchanged;
    // Two passes at most: a concurrent installer may create the index between our check and put.
    for _ in 0..2 {
        if let Some(indices) = alias_indices(engine, layout).await? {
            return Ok((first_index, alias, indices));
        }
        if engine
            .send("check alias name", Method::HEAD, layout.alias(), None)
            .await?
            .0
            .is_success()
        {
            return Err(InstallError::AliasTakenByIndex {
                alias: layout.alias().to_owned(),
            });
        }
        let index_exists = engine
            .send(
                "check first index",
                Method::HEAD,
                &layout.first_index(),
                None,
            )
            .await?
            .0
            .is_success();
        if index_exists {
            let actions = json!({"actions": [{"add": {
                "index": layout.first_index(), "alias": layout.alias(), "is_write_index": true
            }}]});
            engine
                .expect_ok("add alias", Method::POST, "_aliases", Some(&actions))
                .await?;
            alias = Change::Created;
        } else {
            let body = json!({"aliases": {layout.alias(): {"is_write_index": true}}});
            match engine
                .send(
                    "create first index",
                    Method::PUT,
                    &layout.first_index(),
                    Some(&body),
                )
                .await?
            {
                (status, _) if status.is_success() => {
                    first_index = Change::Created;
                    alias = Change::Created;
                }
                // Created concurrently: the next pass finds it.
                (_, body) if body["error"]["type"] == "resource_already_exists_exception" => {}
                (status, body) => {
                    return Err(InstallError::Status {
                        step: "create first index",
                        status,
                        body: body.to_string(),
                    });
                }
            }
        }
    }
    let indices = alias_indices(engine, layout).await?.unwrap_or_default();
    Ok((first_index, alias, indices))
}

/// The indices `layout`'s alias points at, sorted; `None` when there is no such alias.
pub async fn read_alias(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
) -> Result<Option<Vec<String>>, InstallError> {
    alias_indices(&Engine { client, endpoint }, layout).await
}

/// Creates generation `generation` of `layout` (`<alias>-00000N`) from the installed template,
/// its only alias the staging alias (the rebuild writes through it); `Ok(false)` when it
/// exists already (an interrupted rebuild's), the staging alias put on it again.
pub async fn create_generation(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
    generation: u32,
) -> Result<bool, InstallError> {
    let engine = Engine { client, endpoint };
    let step = "create the next index";
    let index = layout.index_of(generation);
    let staging = layout.staging_alias();
    let body = json!({"aliases": {&staging: {}}});
    match engine.send(step, Method::PUT, &index, Some(&body)).await? {
        (status, _) if status.is_success() => Ok(true),
        (_, body) if body["error"]["type"] == "resource_already_exists_exception" => {
            let path = format!("{index}/_alias/{staging}");
            engine.expect_ok(step, Method::PUT, &path, None).await?;
            Ok(false)
        }
        (status, body) => Err(InstallError::Status {
            step,
            status,
            body: body.to_string(),
        }),
    }
}

/// In one `_aliases` request: the alias moves to generation `generation` alone (its write
/// index and every search's target) off `old`, and the staging alias leaves it.
pub async fn swap_alias(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
    generation: u32,
    old: &[String],
) -> Result<(), InstallError> {
    let index = layout.index_of(generation);
    let alias = layout.alias();
    let mut actions = vec![
        json!({"add": {"index": &index, "alias": alias, "is_write_index": true}}),
        json!({"remove": {"index": &index, "alias": layout.staging_alias()}}),
    ];
    actions.extend(
        old.iter()
            .filter(|i| **i != index)
            .map(|i| json!({"remove": {"index": i, "alias": alias}})),
    );
    Engine { client, endpoint }
        .expect_ok(
            "swap the alias",
            Method::POST,
            "_aliases",
            Some(&json!({"actions": actions})),
        )
        .await?;
    Ok(())
}

/// The indices of `indices` whose mappings differ from the installed template's (created from
/// an older template).
pub async fn outdated_indices(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
    indices: &[String],
) -> Result<Vec<String>, InstallError> {
    let engine = Engine { client, endpoint };
    let step = "compare the index mappings with the template";
    let path = format!("_index_template/{}", layout.template_name());
    let template = engine.expect_ok(step, Method::GET, &path, None).await?;
    let wanted = &template["index_templates"][0]["index_template"]["template"]["mappings"];
    let mut outdated = Vec::new();
    for index in indices {
        let mapping = engine
            .expect_ok(step, Method::GET, &format!("{index}/_mapping"), None)
            .await?;
        if !mapping_matches(wanted, &mapping[index.as_str()]["mappings"]) {
            outdated.push(index.clone());
        }
    }
    Ok(outdated)
}

/// Every generation of the pipeline's index (`<alias>-NNNNNN`, sorted), whether the alias points
/// at it or not; another pipeline's indices that the pattern also matches (`<alias>-x-000001`)
/// are not among them.
pub async fn generations(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
) -> Result<Vec<String>, InstallError> {
    let engine = Engine { client, endpoint };
    let path = format!("{}/_alias", layout.index_pattern());
    let found = engine
        .expect_ok("list the index generations", Method::GET, &path, None)
        .await?;
    let mut names: Vec<String> = found
        .as_object()
        .into_iter()
        .flat_map(|indices| indices.keys())
        .filter(|name| layout.generation_of(name).is_some())
        .cloned()
        .collect();
    names.sort();
    Ok(names)
}

/// The search cluster's uuid, which names it whatever address reaches it: from `GET /`, or
/// from the cluster state where `GET /` is not served. `None` when the engine reports none.
pub async fn cluster_uuid(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
) -> Result<Option<String>, InstallError> {
    let engine = Engine { client, endpoint };
    let step = "read the cluster uuid";
    let uuid = |v: &Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty() && *u != "_na_")
            .map(str::to_owned)
    };
    match engine.send(step, Method::GET, "/", None).await? {
        (status, body) if status.is_success() => Ok(uuid(&body, "/cluster_uuid")),
        _ => {
            let path = "_cluster/state/metadata?filter_path=metadata.cluster_uuid";
            let body = engine.expect_ok(step, Method::GET, path, None).await?;
            Ok(uuid(&body, "/metadata/cluster_uuid"))
        }
    }
}

/// The owner uid `layout`'s template records in its `_meta`: `None` when there is no template,
/// `Some(None)` for a template without one.
pub async fn template_owner(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
) -> Result<Option<Option<String>>, InstallError> {
    let engine = Engine { client, endpoint };
    let step = "read the template's owner";
    let path = format!("_index_template/{}", layout.template_name());
    match engine.send(step, Method::GET, &path, None).await? {
        (StatusCode::NOT_FOUND, _) => Ok(None),
        (status, body) if status.is_success() => Ok(Some(
            crate::search::owner_uid(&body["index_templates"][0]["index_template"]["_meta"])
                .map(str::to_owned),
        )),
        (status, body) => Err(InstallError::Status {
            step,
            status,
            body: body.to_string(),
        }),
    }
}

/// Deletes `layout`'s template; one already gone is not an error.
pub async fn delete_template(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
) -> Result<(), InstallError> {
    let step = "delete the index template";
    let path = format!("_index_template/{}", layout.template_name());
    match (Engine { client, endpoint })
        .send(step, Method::DELETE, &path, None)
        .await?
    {
        (status, _) if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
        (status, body) => Err(InstallError::Status {
            step,
            status,
            body: body.to_string(),
        }),
    }
}

/// Every generation of `layout`'s index (as [`generations`]) with the owner uid its mappings'
/// `_meta` records (`None`: none, an index made before marks or by hand).
pub async fn generation_owners(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    layout: &IndexLayout,
) -> Result<Vec<(String, Option<String>)>, InstallError> {
    let engine = Engine { client, endpoint };
    let path = format!("{}/_mapping", layout.index_pattern());
    let found = engine
        .expect_ok("read the index owners", Method::GET, &path, None)
        .await?;
    let mut owners: Vec<(String, Option<String>)> = found
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| layout.generation_of(name).is_some())
        .map(|(name, index)| {
            let owner = crate::search::owner_uid(&index["mappings"]["_meta"]).map(str::to_owned);
            (name.clone(), owner)
        })
        .collect();
    owners.sort();
    Ok(owners)
}

/// Deletes a concrete index (a previous generation, or every one of a pipeline deleted with
/// `deletionPolicy: Delete`); one already gone is not an error.
pub async fn delete_index(
    client: &reqwest::Client,
    endpoint: &SearchEndpoint,
    index: &str,
) -> Result<(), InstallError> {
    let step = "delete an index";
    match (Engine { client, endpoint })
        .send(step, Method::DELETE, index, None)
        .await?
    {
        (status, _) if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
        (status, body) => Err(InstallError::Status {
            step,
            status,
            body: body.to_string(),
        }),
    }
}

/// The indices the alias points at, sorted; `None` when there is no such alias.
async fn alias_indices(
    engine: &Engine<'_>,
    layout: &IndexLayout,
) -> Result<Option<Vec<String>>, InstallError> {
    let path = layout.alias_lookup_path();
    match engine.send("read alias", Method::GET, &path, None).await? {
        (StatusCode::NOT_FOUND, _) => Ok(None),
        (status, body) if status.is_success() => {
            let mut indices: Vec<String> = body
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            indices.sort();
            Ok(Some(indices))
        }
        (status, body) => Err(InstallError::Status {
            step: "read alias",
            status,
            body: body.to_string(),
        }),
    }
}
