//! End-to-end tests of boxd: the real binary on a Unix socket, real processes, a real file system.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod files;
mod lifecycle;
mod process;
mod pty;
mod tcp;
