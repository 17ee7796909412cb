//! Docker volume plugin (placeholder).
