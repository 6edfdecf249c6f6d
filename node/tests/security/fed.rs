//! Security regression tests: fed.
