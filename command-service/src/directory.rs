//! What aggregates may ask about the rest of the world while deciding: who is a member of an
//! organization, and which organization a workspace belongs to. The answers come from the event
//! store itself (the organization and workspace aggregates), so they are never stale.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateContext, EventStore};
use postgres_es::PostgresEventRepository;
use std::collections::{HashMap, HashSet};

use schemas::events::{Role, WorkspaceRole};
use schemas::ids::{ConnectionId, OrganizationId, ProjectId, UserId, WorkspaceId};
use schemas::message::ModelRef;
use schemas::provider::{ConnectionRef, ModelCost, SetPromptLimits};

use crate::aggregates::{Organization, Workspace};
use crate::error::DomainError;

#[async_trait]
pub trait Directory: Send + Sync {
    /// The user's role in the organization, or `None` if they are not a member (or it does not
    /// exist).
    async fn role_in(
        &self,
        org: &OrganizationId,
        user: &UserId,
    ) -> Result<Option<Role>, DomainError>;
    /// What commands need to know of a workspace, or `None` if it does not exist.
    async fn workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceView>, DomainError>;
    /// The model a prompt of `user` in `org` uses (`wanted`, else the organization's default,
    /// else the deployment's) and the provider connection it goes to (`None`: the deployment's
    /// default provider); refused if nothing usable offers the model.
    async fn resolve_model(
        &self,
        org: &OrganizationId,
        user: &UserId,
        wanted: Option<ModelRef>,
    ) -> Result<(ModelRef, Option<ConnectionRef>), DomainError>;
    /// Whether `user` may manage connection `id` of `org` (as the command would decide).
    async fn may_manage_connection(
        &self,
        org: &OrganizationId,
        user: &UserId,
        id: &ConnectionId,
    ) -> Result<(), DomainError>;
    /// The prices of `model` on connection `id` of `org` now, if its catalog has them.
    async fn price_of(
        &self,
        org: &OrganizationId,
        id: &ConnectionId,
        model: &str,
    ) -> Result<Option<ModelCost>, DomainError>;
    /// How fast `org`'s members, and `org` itself, may prompt.
    async fn prompt_limits(&self, org: &OrganizationId) -> Result<SetPromptLimits, DomainError>;
}

/// What commands need to know of a workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceView {
    pub organization_id: OrganizationId,
    pub archived: bool,
    pub members: HashMap<UserId, WorkspaceRole>,
    pub projects: HashSet<ProjectId>,
    pub default_model: Option<ModelRef>,
}

/// The services every aggregate gets in `handle`.
#[derive(Clone)]
pub struct Services {
    pub directory: Arc<dyn Directory>,
}

impl Services {
    /// The services of a caller limited to one organization (an API key): every other
    /// organization, and its workspaces, look missing.
    pub fn scoped_to(&self, organization: &OrganizationId) -> Services {
        let directory =
            ScopedDirectory { inner: self.directory.clone(), organization: organization.clone() };
        Services { directory: Arc::new(directory) }
    }
}

/// A directory that sees one organization only.
struct ScopedDirectory {
    inner: Arc<dyn Directory>,
    organization: OrganizationId,
}

#[async_trait]
impl Directory for ScopedDirectory {
    async fn role_in(
        &self,
        org: &OrganizationId,
        user: &UserId,
    ) -> Result<Option<Role>, DomainError> {
        if org != &self.organization {
            return Ok(None);
        }
        self.inner.role_in(org, user).await
    }

    async fn workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceView>, DomainError> {
        let view = self.inner.workspace(workspace).await?;
        Ok(view.filter(|v| v.organization_id == self.organization))
    }

    async fn resolve_model(
        &self,
        org: &OrganizationId,
        user: &UserId,
        wanted: Option<ModelRef>,
    ) -> Result<(ModelRef, Option<ConnectionRef>), DomainError> {
        if org != &self.organization {
            return Err(DomainError::NotFound);
        }
        self.inner.resolve_model(org, user, wanted).await
    }

    async fn may_manage_connection(
        &self,
        org: &OrganizationId,
        user: &UserId,
        id: &ConnectionId,
    ) -> Result<(), DomainError> {
        if org != &self.organization {
            return Err(DomainError::NotFound);
        }
        self.inner.may_manage_connection(org, user, id).await
    }

    async fn price_of(
        &self,
        org: &OrganizationId,
        id: &ConnectionId,
        model: &str,
    ) -> Result<Option<ModelCost>, DomainError> {
        self.inner.price_of(org, id, model).await
    }

    async fn prompt_limits(&self, org: &OrganizationId) -> Result<SetPromptLimits, DomainError> {
        self.inner.prompt_limits(org).await
    }
}

/// The deployment's default model: its default provider (`OC_PROVIDER_*` of the workers).
pub fn deployment_default() -> ModelRef {
    ModelRef {
        provider_id: crate::aggregates::DEFAULT_PROVIDER.into(),
        model_id: crate::aggregates::DEFAULT_PROVIDER.into(),
    }
}

/// Answers from the event store.
pub struct EventStoreDirectory {
    orgs: PersistedEventStore<PostgresEventRepository, Organization>,
    workspaces: PersistedEventStore<PostgresEventRepository, Workspace>,
}

impl EventStoreDirectory {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self {
            orgs: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone())),
            workspaces: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool)),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> DomainError {
    DomainError::Unavailable(e.to_string())
}

#[async_trait]
impl Directory for EventStoreDirectory {
    async fn role_in(
        &self,
        org: &OrganizationId,
        user: &UserId,
    ) -> Result<Option<Role>, DomainError> {
        let mut ctx = self.orgs.load_aggregate(org.as_str()).await.map_err(unavailable)?;
        Ok(ctx.aggregate().role_of(user))
    }

    async fn workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceView>, DomainError> {
        let mut ctx =
            self.workspaces.load_aggregate(workspace.as_str()).await.map_err(unavailable)?;
        Ok(ctx.aggregate().view())
    }

    async fn resolve_model(
        &self,
        org: &OrganizationId,
        user: &UserId,
        wanted: Option<ModelRef>,
    ) -> Result<(ModelRef, Option<ConnectionRef>), DomainError> {
        let mut ctx = self.orgs.load_aggregate(org.as_str()).await.map_err(unavailable)?;
        let organization = ctx.aggregate();
        let model = wanted
            .or_else(|| organization.default_model().cloned())
            .unwrap_or_else(deployment_default);
        let connection = organization.resolve(user, &model)?;
        Ok((model, connection))
    }

    async fn may_manage_connection(
        &self,
        org: &OrganizationId,
        user: &UserId,
        id: &ConnectionId,
    ) -> Result<(), DomainError> {
        let mut ctx = self.orgs.load_aggregate(org.as_str()).await.map_err(unavailable)?;
        ctx.aggregate().may_manage_connection(id, user)
    }

    async fn price_of(
        &self,
        org: &OrganizationId,
        id: &ConnectionId,
        model: &str,
    ) -> Result<Option<ModelCost>, DomainError> {
        let mut ctx = self.orgs.load_aggregate(org.as_str()).await.map_err(unavailable)?;
        Ok(ctx.aggregate().price_of(id, model))
    }

    async fn prompt_limits(&self, org: &OrganizationId) -> Result<SetPromptLimits, DomainError> {
        let mut ctx = self.orgs.load_aggregate(org.as_str()).await.map_err(unavailable)?;
        Ok(ctx.aggregate().prompt_limits())
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory directory for aggregate unit tests.
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct FakeDirectory {
        pub roles: Mutex<HashMap<(OrganizationId, UserId), Role>>,
        pub workspaces: Mutex<HashMap<WorkspaceId, WorkspaceView>>,
    }

    #[async_trait]
    impl Directory for FakeDirectory {
        async fn role_in(
            &self,
            org: &OrganizationId,
            user: &UserId,
        ) -> Result<Option<Role>, DomainError> {
            Ok(self.roles.lock().unwrap().get(&(org.clone(), user.clone())).copied())
        }
        async fn workspace(&self, ws: &WorkspaceId) -> Result<Option<WorkspaceView>, DomainError> {
            Ok(self.workspaces.lock().unwrap().get(ws).cloned())
        }
        async fn resolve_model(
            &self,
            _: &OrganizationId,
            _: &UserId,
            wanted: Option<ModelRef>,
        ) -> Result<(ModelRef, Option<ConnectionRef>), DomainError> {
            let model = wanted.unwrap_or_else(deployment_default);
            match model.provider_id.as_str() {
                crate::aggregates::DEFAULT_PROVIDER => Ok((model, None)),
                _ => Err(DomainError::Unprocessable("no such provider".into())),
            }
        }
        async fn may_manage_connection(
            &self,
            _: &OrganizationId,
            _: &UserId,
            _: &ConnectionId,
        ) -> Result<(), DomainError> {
            Err(DomainError::NotFound)
        }
        async fn price_of(
            &self,
            _: &OrganizationId,
            _: &ConnectionId,
            _: &str,
        ) -> Result<Option<ModelCost>, DomainError> {
            Ok(None)
        }
        async fn prompt_limits(&self, _: &OrganizationId) -> Result<SetPromptLimits, DomainError> {
            Ok(SetPromptLimits::default())
        }
    }
}
