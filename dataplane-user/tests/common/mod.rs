//! Helpers shared by the integration tests (`mod common;` in each): the
//! crate's own test helpers, `src/testutil.rs`, compiled into each test
//! binary, so that the unit and integration tests use one copy of
//! `Scratch` and `in_private_netns`.

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

#[path = "../../src/testutil.rs"]
mod testutil;

pub use testutil::*;
