//! ebb agent and CLI.
