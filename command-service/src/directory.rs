//! What aggregates may ask about the rest of the world while deciding: who is a member of an
//! organization, and which organization a workspace belongs to. The answers come from the event
//! store itself (the organization and workspace aggregates), so they are never stale: each is
//! kept as last read, and every answer applies the events committed since.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use postgres_es::PostgresEventRepository;
use std::collections::{HashMap, HashSet};

use schemas::budget::{Budget, BudgetAlert};
use schemas::events::{Role, WorkspaceRole};
use schemas::ids::{ApiKeyId, ConnectionId, OrganizationId, ProjectId, UserId, WorkspaceId};
use schemas::message::ModelRef;
use schemas::provider::{ConnectionRef, ModelCost, SetPromptLimits};

use crate::aggregate_cache::AggregateCache;
use crate::aggregates::{ApiKey, Organization, Payer, Workspace};
use crate::catch_up::CatchUp;
use crate::error::DomainError;
use crate::read_ahead::{ReadAhead, ReadAheadDirectory};
use crate::read_set::ReadSet;

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
    /// What a prompt of `user` in `org` runs on and is charged to: the model (`wanted`, else
    /// the organization's default, else the deployment's), the provider connection it goes to
    /// (`None`: the deployment's default provider), its prices, and the budgets it falls under;
    /// refused if nothing usable offers the model.
    async fn prompt_terms(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptTerms, DomainError>;
    /// Everything a prompt asks, at once: the session's workspace, the user's role in the
    /// organization, and the prompt's terms (`prompt_terms`, the workspace's default model after
    /// `wanted`; kept apart so the command can check the rest first). This default asks one
    /// question after another.
    async fn prompt_context(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptContext, DomainError> {
        let Some(workspace) = self.workspace(&payer.workspace).await? else {
            return Ok(PromptContext::not_found());
        };
        let role = self.role_in(org, &payer.user).await?;
        let wanted = wanted.or_else(|| workspace.default_model.clone());
        let terms = self.prompt_terms(org, payer, wanted).await;
        Ok(PromptContext { workspace: Some(workspace), role, terms })
    }
    /// Organization `org` and workspace `workspace` as of now, to answer one command's
    /// questions about them from (`crate::read_ahead`); `None` where this directory cannot.
    async fn read_ahead(
        &self,
        _org: &OrganizationId,
        _workspace: &WorkspaceId,
    ) -> Result<Option<ReadAhead>, DomainError> {
        Ok(None)
    }
    /// The organization an API key acts in, if the key exists and is not revoked.
    async fn api_key_organization(
        &self,
        key: &ApiKeyId,
    ) -> Result<Option<OrganizationId>, DomainError>;
    /// This directory answering from what this instance holds, where it holds it (no read),
    /// every aggregate it answers from noted in `reads` for the commit to check
    /// (`crate::read_set`); `None` where it cannot.
    fn answering_from_cache(&self, _reads: &ReadSet) -> Option<Arc<dyn Directory>> {
        None
    }
    /// Events a commit's check found committed after what this directory holds, in order.
    async fn advance(&self, _events: Vec<SerializedEvent>) {}
    /// What a completed reply of `org` is charged against: its prompt rates, and its budgets,
    /// each with the alerts it may still raise at `time`. From the organization as this
    /// instance holds it, without reading what was committed since (it follows every
    /// instance's commits, and the reply's prompt was checked at its commit against the copy
    /// it was decided from); read only if none is held. A threshold missed on a copy still
    /// stale is raised by the budget's next reply, and an alert's own command is checked at its
    /// commit.
    async fn spend_rules(&self, org: &OrganizationId, time: i64)
    -> Result<SpendRules, DomainError>;
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
}

/// An organization's prompt rates and budgets (`Directory::spend_rules`).
#[derive(Debug, Clone, Default)]
pub struct SpendRules {
    pub limits: SetPromptLimits,
    /// Each budget with the alerts it may still raise.
    pub budgets: Vec<(Budget, Vec<BudgetAlert>)>,
}

/// Who a prompt is charged to (its workspace, member and API key).
#[derive(Debug, Clone)]
pub struct PromptPayer {
    pub workspace: WorkspaceId,
    pub user: UserId,
    pub api_key: Option<ApiKeyId>,
}

/// What a prompt runs on and is charged to (`Directory::prompt_terms`).
#[derive(Debug, Clone)]
pub struct PromptTerms {
    pub model: ModelRef,
    pub connection: Option<ConnectionRef>,
    /// The model's prices on that connection, if its catalog has them.
    pub price: Option<ModelCost>,
    pub budgets: Vec<Budget>,
    /// How fast the organization lets its members prompt.
    pub limits: SetPromptLimits,
}

/// What a prompt asks of the directory (`Directory::prompt_context`).
#[derive(Debug)]
pub struct PromptContext {
    /// `None` if the workspace does not exist (or is out of reach).
    pub workspace: Option<WorkspaceView>,
    pub role: Option<Role>,
    pub terms: Result<PromptTerms, DomainError>,
}

impl PromptContext {
    fn not_found() -> Self {
        Self { workspace: None, role: None, terms: Err(DomainError::NotFound) }
    }
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
    /// Where prompts hold what their replies may cost under the budgets (`crate::spend`).
    pub spend: Arc<dyn crate::spend::SpendLedger>,
}

impl Services {
    /// These services with `reads` (an organization and workspace a command will ask about)
    /// read now, at the same time as the command's aggregate (`crate::read_ahead`).
    pub async fn read_ahead(
        &self,
        reads: Option<(OrganizationId, WorkspaceId)>,
    ) -> Result<Services, DomainError> {
        let Some((org, workspace)) = reads else { return Ok(self.clone()) };
        let Some(read) = self.directory.read_ahead(&org, &workspace).await? else {
            return Ok(self.clone());
        };
        let directory = ReadAheadDirectory { read, inner: self.directory.clone() };
        Ok(Services { directory: Arc::new(directory), spend: self.spend.clone() })
    }

    /// The services of a caller limited to one organization (an API key): every other
    /// organization, and its workspaces, look missing.
    pub fn scoped_to(&self, organization: &OrganizationId) -> Services {
        let directory =
            ScopedDirectory { inner: self.directory.clone(), organization: organization.clone() };
        Services { directory: Arc::new(directory), spend: self.spend.clone() }
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

    async fn prompt_terms(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptTerms, DomainError> {
        if org != &self.organization {
            return Err(DomainError::NotFound);
        }
        self.inner.prompt_terms(org, payer, wanted).await
    }

    async fn prompt_context(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptContext, DomainError> {
        if org != &self.organization {
            return Ok(PromptContext::not_found());
        }
        let mut context = self.inner.prompt_context(org, payer, wanted).await?;
        context.workspace = context.workspace.filter(|v| v.organization_id == self.organization);
        Ok(context)
    }

    async fn api_key_organization(
        &self,
        key: &ApiKeyId,
    ) -> Result<Option<OrganizationId>, DomainError> {
        let org = self.inner.api_key_organization(key).await?;
        Ok(org.filter(|o| o == &self.organization))
    }

    async fn spend_rules(
        &self,
        org: &OrganizationId,
        time: i64,
    ) -> Result<SpendRules, DomainError> {
        self.inner.spend_rules(org, time).await
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
}

/// The deployment's default model: its default provider (`OC_PROVIDER_*` of the workers).
pub fn deployment_default() -> ModelRef {
    ModelRef {
        provider_id: crate::aggregates::DEFAULT_PROVIDER.into(),
        model_id: crate::aggregates::DEFAULT_PROVIDER.into(),
    }
}

/// Answers from the event store. Each aggregate is kept as last read (`AggregateCache`), and
/// every answer reads only the events committed since by any instance: no full replay per
/// command, and a membership change counts at once everywhere.
pub struct EventStoreDirectory {
    orgs: Arc<Replayed<Organization>>,
    workspaces: Arc<Replayed<Workspace>>,
    api_keys: Arc<Replayed<ApiKey>>,
    /// Set on a directory answering from this instance's caches (`Directory::answering_from_cache`): what
    /// it answered from.
    reads: Option<ReadSet>,
}

/// One aggregate kind, read through its cache.
struct Replayed<A: cqrs_es::Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    cache: AggregateCache<A>,
}

impl<A: cqrs_es::Aggregate + Clone + 'static> Replayed<A> {
    fn new(pool: &sqlx::PgPool, catch_up: &CatchUp) -> Self {
        let store =
            PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
        Self { store, cache: AggregateCache::new(catch_up.clone()) }
    }

    /// `id` with every committed event applied; with `reads`, as this instance holds it if it
    /// does (no read), noted in `reads` either way.
    async fn load(&self, id: &str, reads: Option<&ReadSet>) -> Result<A, DomainError> {
        if let Some(reads) = reads
            && let Some(cached) = self.cache.peek(id).await
        {
            reads.note(A::TYPE, id, cached.1);
            return Ok(cached.0.clone());
        }
        let ctx = self.cache.load(&self.store, id).await.map_err(unavailable)?;
        // (everything read was committed: a sound starting point for the next read)
        self.cache.remember(id, ctx.aggregate.clone(), ctx.current_sequence).await;
        if let Some(reads) = reads {
            reads.note(A::TYPE, id, ctx.current_sequence);
        }
        Ok(ctx.aggregate)
    }

    /// `id` as this instance holds it, without reading what was committed since; read as
    /// [`Self::load`] only when none is held.
    async fn held(&self, id: &str) -> Result<A, DomainError> {
        match self.cache.peek(id).await {
            Some(cached) => Ok(cached.0.clone()),
            None => self.load(id, None).await,
        }
    }
}

impl EventStoreDirectory {
    pub fn new(pool: sqlx::PgPool, catch_up: CatchUp) -> Self {
        Self {
            orgs: Arc::new(Replayed::new(&pool, &catch_up)),
            workspaces: Arc::new(Replayed::new(&pool, &catch_up)),
            api_keys: Arc::new(Replayed::new(&pool, &catch_up)),
            reads: None,
        }
    }

    async fn organization(&self, id: &OrganizationId) -> Result<Organization, DomainError> {
        self.orgs.load(id.as_str(), self.reads.as_ref()).await
    }

    async fn read_workspace(&self, id: &WorkspaceId) -> Result<Workspace, DomainError> {
        self.workspaces.load(id.as_str(), self.reads.as_ref()).await
    }

    async fn api_key(&self, id: &ApiKeyId) -> Result<ApiKey, DomainError> {
        self.api_keys.load(id.as_str(), self.reads.as_ref()).await
    }
}

/// `Directory::prompt_terms` of an organization as read.
fn terms_of(
    organization: &Organization,
    payer: PromptPayer,
    wanted: Option<ModelRef>,
) -> Result<PromptTerms, DomainError> {
    let model =
        wanted.or_else(|| organization.default_model().cloned()).unwrap_or_else(deployment_default);
    let connection = organization.resolve(&payer.user, &model)?;
    let price = connection.as_ref().and_then(|c| organization.price_of(&c.id, &model.model_id));
    let budgets = organization.budgets_for(&Payer {
        workspace: &payer.workspace,
        user: &payer.user,
        api_key: payer.api_key.as_ref(),
        own_key: connection.as_ref().is_some_and(|c| c.own_key),
    });
    Ok(PromptTerms { model, connection, price, budgets, limits: organization.prompt_limits() })
}

/// `Directory::prompt_context` of an organization and workspace as read.
pub(crate) fn context_of(
    organization: &Organization,
    workspace: &Workspace,
    payer: PromptPayer,
    wanted: Option<ModelRef>,
) -> PromptContext {
    let Some(view) = workspace.view() else {
        return PromptContext::not_found();
    };
    let role = organization.role_of(&payer.user);
    let wanted = wanted.or_else(|| view.default_model.clone());
    let terms = terms_of(organization, payer, wanted);
    PromptContext { workspace: Some(view), role, terms }
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
        Ok(self.organization(org).await?.role_of(user))
    }

    async fn workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceView>, DomainError> {
        Ok(self.read_workspace(workspace).await?.view())
    }

    async fn prompt_terms(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptTerms, DomainError> {
        terms_of(&self.organization(org).await?, payer, wanted)
    }

    async fn prompt_context(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptContext, DomainError> {
        // Both read at the same time: one round trip's wait, and the organization read once.
        let (organization, workspace) =
            tokio::join!(self.organization(org), self.read_workspace(&payer.workspace));
        Ok(context_of(&organization?, &workspace?, payer, wanted))
    }

    async fn read_ahead(
        &self,
        org: &OrganizationId,
        workspace: &WorkspaceId,
    ) -> Result<Option<ReadAhead>, DomainError> {
        let (organization, read) =
            tokio::join!(self.organization(org), self.read_workspace(workspace));
        Ok(Some(ReadAhead {
            organization: (org.clone(), organization?),
            workspace: (workspace.clone(), read?),
        }))
    }

    fn answering_from_cache(&self, reads: &ReadSet) -> Option<Arc<dyn Directory>> {
        Some(Arc::new(Self {
            orgs: self.orgs.clone(),
            workspaces: self.workspaces.clone(),
            api_keys: self.api_keys.clone(),
            reads: Some(reads.clone()),
        }))
    }

    async fn advance(&self, events: Vec<SerializedEvent>) {
        // (one at a time: each follows on from the one before, whatever aggregate it is of)
        for event in events {
            let id = event.aggregate_id.clone();
            match event.aggregate_type.as_str() {
                Organization::TYPE => self.orgs.cache.advance(&id, None, vec![event]).await,
                Workspace::TYPE => self.workspaces.cache.advance(&id, None, vec![event]).await,
                ApiKey::TYPE => self.api_keys.cache.advance(&id, None, vec![event]).await,
                _ => {}
            }
        }
    }

    async fn api_key_organization(
        &self,
        key: &ApiKeyId,
    ) -> Result<Option<OrganizationId>, DomainError> {
        Ok(self.api_key(key).await?.live_organization().cloned())
    }

    async fn spend_rules(
        &self,
        org: &OrganizationId,
        time: i64,
    ) -> Result<SpendRules, DomainError> {
        let organization = &match self.reads {
            // (answering a decision: what is held, noted for its commit's check)
            Some(_) => self.organization(org).await?,
            None => self.orgs.held(org.as_str()).await?,
        };
        let budgets = organization
            .budgets()
            .map(|b| {
                let due = b
                    .spec
                    .thresholds
                    .iter()
                    .map(|&percent| BudgetAlert::Threshold { percent })
                    .chain([BudgetAlert::Exhausted])
                    .filter(|a| organization.budget_alert_due(&b.id, *a, time))
                    .collect();
                (b.clone(), due)
            })
            .collect();
        Ok(SpendRules { limits: organization.prompt_limits(), budgets })
    }

    async fn may_manage_connection(
        &self,
        org: &OrganizationId,
        user: &UserId,
        id: &ConnectionId,
    ) -> Result<(), DomainError> {
        self.organization(org).await?.may_manage_connection(id, user)
    }

    async fn price_of(
        &self,
        org: &OrganizationId,
        id: &ConnectionId,
        model: &str,
    ) -> Result<Option<ModelCost>, DomainError> {
        Ok(self.organization(org).await?.price_of(id, model))
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
        async fn prompt_terms(
            &self,
            _: &OrganizationId,
            _: PromptPayer,
            wanted: Option<ModelRef>,
        ) -> Result<PromptTerms, DomainError> {
            let model = wanted.unwrap_or_else(deployment_default);
            match model.provider_id.as_str() {
                crate::aggregates::DEFAULT_PROVIDER => Ok(PromptTerms {
                    model,
                    connection: None,
                    price: None,
                    budgets: Vec::new(),
                    limits: SetPromptLimits::default(),
                }),
                _ => Err(DomainError::Unprocessable("no such provider".into())),
            }
        }
        async fn api_key_organization(
            &self,
            _: &ApiKeyId,
        ) -> Result<Option<OrganizationId>, DomainError> {
            Ok(None)
        }
        async fn spend_rules(&self, _: &OrganizationId, _: i64) -> Result<SpendRules, DomainError> {
            Ok(SpendRules::default())
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
    }
}
