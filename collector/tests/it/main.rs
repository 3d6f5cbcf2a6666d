//! The collector's integration tests, in one binary (one link): the `kiln` CLI, the agent
//! API, the run lifecycle, pages, network boot and operators, each against a real collector
//! on 127.0.0.1 with a temporary database.

#![allow(clippy::unwrap_used)]

mod agent_api;
mod agents;
mod attest;
mod bounds;
mod cabling;
mod cli;
mod clients;
mod common;
mod failover;
mod ipxe;
mod lifecycle;
mod operators;
mod pages;
mod pairs;
mod payload;
mod payload_failover;
mod postgres;
mod verify;
mod waivers;
