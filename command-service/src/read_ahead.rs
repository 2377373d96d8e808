//! A command's directory answers, read alongside its aggregate.
//!
//! A prompt asks the directory about its session's workspace and organization, which it learns
//! only once the session is loaded: two reads one after the other. A cached session already
//! knows both (they never change), so the executor reads them at the same time as the session
//! (`Scoped::directory_reads`), and the command's questions about them are answered from that
//! read. It is as current as a read made later in the command: it began after the request
//! arrived, so it holds everything committed before the request was made. Questions about
//! anything else go to the directory as before.

use std::sync::Arc;

use async_trait::async_trait;
use schemas::events::Role;
use schemas::ids::{ApiKeyId, ConnectionId, OrganizationId, UserId, WorkspaceId};
use schemas::message::ModelRef;
use schemas::provider::ModelCost;

use crate::aggregates::{Organization, Workspace};
use crate::directory::{
    Directory, PromptContext, PromptPayer, PromptTerms, SpendRules, WorkspaceView, context_of,
};
use crate::error::DomainError;

/// An organization and a workspace, as read for one command.
pub struct ReadAhead {
    pub organization: (OrganizationId, Organization),
    pub workspace: (WorkspaceId, Workspace),
}

/// What prompts and aborts ask about the read-ahead organization and workspace (membership,
/// the prompt's context) answered from the read; everything else from `inner`.
pub struct ReadAheadDirectory {
    pub read: ReadAhead,
    pub inner: Arc<dyn Directory>,
}

impl ReadAheadDirectory {
    fn read_organization(&self, id: &OrganizationId) -> Option<&Organization> {
        (&self.read.organization.0 == id).then_some(&self.read.organization.1)
    }

    fn read_workspace(&self, id: &WorkspaceId) -> Option<&Workspace> {
        (&self.read.workspace.0 == id).then_some(&self.read.workspace.1)
    }
}

#[async_trait]
impl Directory for ReadAheadDirectory {
    async fn role_in(
        &self,
        org: &OrganizationId,
        user: &UserId,
    ) -> Result<Option<Role>, DomainError> {
        match self.read_organization(org) {
            Some(organization) => Ok(organization.role_of(user)),
            None => self.inner.role_in(org, user).await,
        }
    }

    async fn workspace(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceView>, DomainError> {
        match self.read_workspace(workspace) {
            Some(read) => Ok(read.view()),
            None => self.inner.workspace(workspace).await,
        }
    }

    async fn prompt_terms(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptTerms, DomainError> {
        self.inner.prompt_terms(org, payer, wanted).await
    }

    async fn prompt_context(
        &self,
        org: &OrganizationId,
        payer: PromptPayer,
        wanted: Option<ModelRef>,
    ) -> Result<PromptContext, DomainError> {
        let workspace = self.read_workspace(&payer.workspace);
        match (self.read_organization(org), workspace) {
            (Some(organization), Some(workspace)) => {
                Ok(context_of(organization, workspace, payer, wanted))
            }
            _ => self.inner.prompt_context(org, payer, wanted).await,
        }
    }

    async fn api_key_organization(
        &self,
        key: &ApiKeyId,
    ) -> Result<Option<OrganizationId>, DomainError> {
        self.inner.api_key_organization(key).await
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
