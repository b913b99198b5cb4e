//! The actor graph (see docs/architecture.md):
//!
//! ```text
//!   notify watcher / SIGHUP ──Reload──▶ Supervisor ──spawns/stops──▶ AccountActor (one per account)
//!                                          ▲  AccountExit                  │ SyncChunk
//!                                          └───────────────────────────────┤
//!   HTTP API ──EditCrm──▶ Matcher ◀────────────────────────────────────────┘
//!                           │ CommitPage
//!                           ▼
//!                         Writer (sole writer of CRM state; SyncArbiter thread)
//! ```

pub mod account;
pub mod matcher;
pub mod supervisor;
pub mod writer;

#[cfg(test)]
mod push_race_tests;
#[cfg(test)]
mod storage_fault_tests;
