//! The berth agent (stub: filled in by the agent issue).

#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent is not implemented yet")]
    NotImplemented,
}

pub async fn run(_args: AgentArgs) -> Result<(), AgentError> {
    Err(AgentError::NotImplemented)
}
