//! Security regression tests: ws.
