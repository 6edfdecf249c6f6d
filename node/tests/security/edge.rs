//! Security regression tests: edge.
