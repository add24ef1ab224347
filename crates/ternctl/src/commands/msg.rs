//! `ternctl msg ...`: the dispatch (show is in [`super::msg_show`], find in [`super::msg_find`], the
//! actions in [`super::actions`]).

use super::actions::{self, Selection, Verb};
use super::{msg_find, msg_show};
use crate::cli::{Global, MsgCommand};

/// Runs one `msg` subcommand.
pub async fn run(global: &Global, command: MsgCommand) -> anyhow::Result<()> {
    match command {
        MsgCommand::Show { id, body } => msg_show::show(global, &id, body).await,
        MsgCommand::Find(args) => msg_find::find(global, args).await,
        MsgCommand::Hold(a) => actions::act(global, Verb::Hold, Selection::ids(a.ids, a.dry_run), None).await,
        MsgCommand::Release(a) => {
            actions::act(global, Verb::Release, Selection::ids(a.ids, a.dry_run), None).await
        }
        MsgCommand::Retry(a) => actions::act(global, Verb::Retry, Selection::action(a), None).await,
        MsgCommand::Bounce { action, reason } => {
            actions::act(global, Verb::Bounce, Selection::action(action), reason).await
        }
        MsgCommand::Delete(a) => actions::act(global, Verb::Delete, Selection::action(a), None).await,
    }
}
