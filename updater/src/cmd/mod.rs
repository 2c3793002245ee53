//! One module per command (`status`, `mark-good`/`mark-bad`/`rollback`, `boot-check`, `verify`,
//! `update`); `apply` lives in `install`. A command may use every folder below it.

pub mod bootcheck;
pub mod corrupt;
pub mod mark;
pub mod status;
pub mod update;
pub mod verify;

use abbundle::error::exit;
use abbundle::{FormatError, KeysError};

use crate::{codes, fetch};

/// The documented exit code for an error (`docs/exit-codes.md`): an abupdate refusal's own
/// code, else a bundle error's, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<codes::Refusal>().map(|r| r.code))
        .or_else(|| {
            e.chain().find_map(|c| match c.downcast_ref::<KeysError>() {
                Some(KeysError::Unsafe(_)) => Some(codes::KEYS_UNSAFE),
                _ => None,
            })
        })
        .or_else(|| {
            e.chain()
                .any(fetch::is_fetch_error)
                .then_some(codes::SOURCE_UNAVAILABLE)
        })
        .or_else(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<FormatError>())
                .map(FormatError::exit_code)
        })
        .unwrap_or(exit::FAILURE)
}
