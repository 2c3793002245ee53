//! Crash consistency (fault injection): filled in next.
