//! Security regression tests: mailbox.
