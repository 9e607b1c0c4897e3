//! The Marathon client (stub: filled in by the Marathon issue).
