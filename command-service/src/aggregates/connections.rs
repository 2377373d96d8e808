//! The organization's provider connections and its bring-your-own-key policy: part of the
//! organization aggregate (so a prompt's model resolves against one consistent view), kept here
//! to keep the membership rules legible. Keys are not in the aggregate: only fingerprints.

use std::collections::{BTreeMap, HashMap};

use schemas::events::OrganizationEvent;
use schemas::ids::{ConnectionId, OrganizationId, UserId};
use schemas::message::ModelRef;
use schemas::policy::Action;
use schemas::provider::{
    ByokPolicy, ConnectionInfo, ConnectionKind, ConnectionRef, ModelInfo, SetPromptLimits,
};
use serde::{Deserialize, Serialize};

use super::Organization;
use crate::error::DomainError;

/// The provider id prompts use for the deployment's default provider (no connection).
pub const DEFAULT_PROVIDER: &str = "default";
/// Most connections one organization holds (its own and its members' together).
pub const MAX_CONNECTIONS: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connections {
    pub(super) by_id: HashMap<ConnectionId, ConnectionInfo>,
    pub(super) byok: ByokPolicy,
    /// The model prompts use when they name none (and their session and workspace have none).
    #[serde(default)]
    pub(super) default_model: Option<ModelRef>,
    /// How fast members and the organization may prompt.
    #[serde(default)]
    pub(super) limits: SetPromptLimits,
}

/// A connection as a command proposes it (validated here), without the key.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub kind: ConnectionKind,
    pub provider_id: String,
    pub name: String,
    pub base_url: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub models: Vec<String>,
    pub personal: bool,
}

/// Changes to a connection; `None` keeps what is there.
#[derive(Debug, Clone, Default)]
pub struct ConnectionChange {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub models: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// A new key's (fingerprint, last four).
    pub key: Option<(String, String)>,
    /// Catalog entries to add or override (their models become offered).
    pub catalog: Option<BTreeMap<String, ModelInfo>>,
}

impl Organization {
    /// The connection `actor` may manage: the organization's with `ManageProviders`, their own
    /// personal one; another member's is as missing as any.
    fn manageable(&self, id: &ConnectionId, actor: &UserId) -> Result<ConnectionInfo, DomainError> {
        self.authorize(actor, Action::Read)?;
        let c = self.connections.by_id.get(id).ok_or(DomainError::NotFound)?;
        match &c.owner_id {
            None => {
                self.authorize(actor, Action::ManageProviders)?;
            }
            Some(owner) if owner == actor => {}
            Some(_) => return Err(DomainError::NotFound),
        }
        Ok(c.clone())
    }

    pub(super) fn add_connection(
        &self,
        id: ConnectionId,
        spec: ConnectionSpec,
        fingerprint: (String, String),
        actor: UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = if spec.personal {
            let org = self.authorize(&actor, Action::BringOwnKey)?;
            if !self.connections.byok.allows(&spec.provider_id) {
                return Err(DomainError::Forbidden(format!(
                    "the organization does not let members bring their own key for {}",
                    spec.provider_id
                )));
            }
            org
        } else {
            self.authorize(&actor, Action::ManageProviders)?
        };
        if self.connections.by_id.len() >= MAX_CONNECTIONS {
            return Err(DomainError::TooLarge(format!(
                "an organization holds at most {MAX_CONNECTIONS} connections"
            )));
        }
        let owner_id = spec.personal.then(|| actor.clone());
        if self
            .connections
            .by_id
            .values()
            .any(|c| c.provider_id == spec.provider_id && c.owner_id == owner_id && c.id != id)
        {
            return Err(DomainError::WrongState(format!(
                "there is a connection for {} already; change it or delete it first",
                spec.provider_id
            )));
        }
        let connection = ConnectionInfo {
            id,
            owner_id,
            kind: spec.kind,
            provider_id: valid_provider_id(&spec.provider_id)?,
            name: super::valid_name("name", &spec.name)?,
            base_url: valid_base_url(
                spec.base_url.as_deref().unwrap_or(spec.kind.default_base_url()),
            )?,
            headers: valid_headers(spec.headers)?,
            models: valid_models(spec.models)?,
            catalog: Default::default(),
            enabled: true,
            fingerprint: fingerprint.0,
            key_last4: fingerprint.1,
        };
        Ok(vec![OrganizationEvent::ConnectionSet {
            organization_id,
            connection: Box::new(connection),
            actor_id: actor,
            time,
        }])
    }

    pub(super) fn change_connection(
        &self,
        id: &ConnectionId,
        change: ConnectionChange,
        actor: UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let mut c = self.manageable(id, &actor)?;
        if let Some(name) = change.name {
            c.name = super::valid_name("name", &name)?;
        }
        if let Some(url) = change.base_url {
            c.base_url = valid_base_url(&url)?;
        }
        if let Some(headers) = change.headers {
            c.headers = valid_headers(headers)?;
        }
        if let Some(models) = change.models {
            c.models = valid_models(models)?;
        }
        if let Some(enabled) = change.enabled {
            c.enabled = enabled;
        }
        if let Some((fingerprint, last4)) = change.key {
            c.fingerprint = fingerprint;
            c.key_last4 = last4;
        }
        if let Some(entries) = change.catalog {
            for (model, info) in entries {
                if !c.models.contains(&model) {
                    c.models.push(model.clone());
                }
                c.catalog.insert(model, info);
            }
            c.models = valid_models(std::mem::take(&mut c.models))?;
            if let Some(name) =
                c.catalog.values().find_map(|m| m.name.as_ref().filter(|n| n.len() > 200))
            {
                return Err(DomainError::Invalid(format!("model name {name:?} is too long")));
            }
        }
        let organization_id = self.id.clone().ok_or(DomainError::NotFound)?;
        Ok(vec![OrganizationEvent::ConnectionSet {
            organization_id,
            connection: Box::new(c),
            actor_id: actor,
            time,
        }])
    }

    pub(super) fn remove_connection(
        &self,
        id: &ConnectionId,
        actor: &UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let c = self.manageable(id, actor)?;
        let organization_id = self.id.clone().ok_or(DomainError::NotFound)?;
        Ok(vec![OrganizationEvent::ConnectionRemoved {
            organization_id,
            connection_id: c.id,
            time,
        }])
    }

    pub(super) fn set_byok(
        &self,
        policy: ByokPolicy,
        actor: &UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.authorize(actor, Action::ManageProviders)?;
        for p in &policy.providers {
            valid_provider_id(p)?;
        }
        Ok(vec![OrganizationEvent::ByokPolicySet { organization_id, policy, time }])
    }

    pub(super) fn set_default_model(
        &self,
        model: ModelRef,
        actor: &UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.authorize(actor, Action::ManageProviders)?;
        // Usable by everyone: offered by an enabled connection of the organization itself.
        if model.provider_id != DEFAULT_PROVIDER {
            let offered = self.connections.by_id.values().any(|c| {
                c.owner_id.is_none()
                    && c.enabled
                    && c.provider_id == model.provider_id
                    && c.models.contains(&model.model_id)
            });
            if !offered {
                return Err(DomainError::Unprocessable(format!(
                    "{}/{} is not a model the organization's connections offer",
                    model.provider_id, model.model_id
                )));
            }
        }
        Ok(vec![OrganizationEvent::DefaultModelSet { organization_id, model, time }])
    }

    pub(super) fn set_prompt_limits(
        &self,
        limits: SetPromptLimits,
        actor: &UserId,
        time: i64,
    ) -> Result<Vec<OrganizationEvent>, DomainError> {
        let organization_id = self.authorize(actor, Action::ManageProviders)?;
        Ok(vec![OrganizationEvent::PromptLimitsSet { organization_id, limits, time }])
    }

    /// How fast members and the organization may prompt.
    pub fn prompt_limits(&self) -> SetPromptLimits {
        self.connections.limits
    }

    /// The prices of `model` on connection `id` now (the catalog's), if known.
    pub fn price_of(&self, id: &ConnectionId, model: &str) -> Option<schemas::provider::ModelCost> {
        self.connections.by_id.get(id)?.catalog.get(model)?.cost
    }

    /// The organization's default model, if it set one.
    pub fn default_model(&self) -> Option<&ModelRef> {
        self.connections.default_model.as_ref()
    }

    /// Whether `actor` may manage connection `id` (checked before its key is written or shredded).
    pub fn may_manage_connection(
        &self,
        id: &ConnectionId,
        actor: &UserId,
    ) -> Result<(), DomainError> {
        self.manageable(id, actor).map(drop)
    }

    /// The connection a prompt of `user` for `model` goes to: their own for that provider when
    /// they have one and the organization allows it, otherwise the organization's. `None` for
    /// the deployment's default provider. Refused when no usable connection offers the model.
    pub fn resolve(
        &self,
        user: &UserId,
        model: &ModelRef,
    ) -> Result<Option<ConnectionRef>, DomainError> {
        if model.provider_id == DEFAULT_PROVIDER {
            return Ok(None);
        }
        let for_provider = |owner: Option<&UserId>| {
            self.connections.by_id.values().find(|c| {
                c.provider_id == model.provider_id && c.owner_id.as_ref() == owner && c.enabled
            })
        };
        let own =
            for_provider(Some(user)).filter(|_| self.connections.byok.allows(&model.provider_id));
        let connection = own.or_else(|| for_provider(None)).ok_or_else(|| {
            DomainError::Unprocessable(format!(
                "no enabled connection for provider {} is available to you",
                model.provider_id
            ))
        })?;
        if !connection.models.iter().any(|m| m == &model.model_id) {
            return Err(DomainError::Unprocessable(format!(
                "{}/{} is not a model this organization offers",
                model.provider_id, model.model_id
            )));
        }
        Ok(Some(ConnectionRef::for_model(connection, &model.model_id)))
    }

    pub(super) fn apply_connection(&mut self, event: &OrganizationEvent) {
        match event {
            OrganizationEvent::ConnectionSet { connection, .. } => {
                self.connections.by_id.insert(connection.id.clone(), (**connection).clone());
            }
            OrganizationEvent::ConnectionRemoved { connection_id, .. } => {
                self.connections.by_id.remove(connection_id);
            }
            OrganizationEvent::ByokPolicySet { policy, .. } => {
                self.connections.byok = policy.clone()
            }
            OrganizationEvent::DefaultModelSet { model, .. } => {
                self.connections.default_model = Some(model.clone());
            }
            OrganizationEvent::PromptLimitsSet { limits, .. } => self.connections.limits = *limits,
            _ => {}
        }
    }

    pub fn organization_id(&self) -> Option<&OrganizationId> {
        self.id.as_ref()
    }
}

fn valid_provider_id(id: &str) -> Result<String, DomainError> {
    let ok = (1..=64).contains(&id.len())
        && id != DEFAULT_PROVIDER
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    ok.then(|| id.to_owned()).ok_or_else(|| {
        DomainError::Invalid(
            "providerID: 1 to 64 of a-z, 0-9, '-', '_', '.', and not \"default\"".into(),
        )
    })
}

/// An http(s) URL without credentials in it.
fn valid_base_url(url: &str) -> Result<String, DomainError> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
    let ok = matches!(scheme, "https" | "http")
        && !rest.is_empty()
        && url.len() <= 2048
        && !rest.split('/').next().unwrap_or("").contains('@')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| url.to_owned()).ok_or_else(|| {
        DomainError::Invalid("baseURL must be an http(s) URL without credentials".into())
    })
}

/// Headers a connection may add: not credentials (the key goes in `apiKey`, encrypted), a few.
fn valid_headers(
    headers: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, DomainError> {
    const CREDENTIALS: [&str; 6] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
    ];
    if headers.len() > 16 {
        return Err(DomainError::Invalid("at most 16 headers".into()));
    }
    for (name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        let name_ok = (1..=64).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let value_ok =
            value.len() <= 512 && value.chars().all(|c| c == ' ' || c.is_ascii_graphic());
        if !name_ok || !value_ok {
            return Err(DomainError::Invalid(format!("header {name:?} is not a valid header")));
        }
        if CREDENTIALS.contains(&lower.as_str()) {
            return Err(DomainError::Invalid(format!(
                "header {name} would carry a credential: put the key in apiKey, where it is encrypted"
            )));
        }
    }
    Ok(headers)
}

fn valid_models(models: Vec<String>) -> Result<Vec<String>, DomainError> {
    let ok = (1..=200).contains(&models.len())
        && models.iter().all(|m| {
            (1..=200).contains(&m.len()) && !m.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    ok.then_some(models).ok_or_else(|| {
        DomainError::Invalid(
            "models: 1 to 200 model ids, each 1 to 200 characters, no spaces".into(),
        )
    })
}
