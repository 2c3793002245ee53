//! status, mark-good, mark-bad, rollback, boot-check.
