//! Security regression tests: client.
