//! Security regression tests: keys.
