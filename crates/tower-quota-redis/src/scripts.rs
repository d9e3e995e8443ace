//! The Lua scripts, loaded once per process and run with EVALSHA
//! (`redis::Script` loads them again after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use redis::Script;

pub(crate) struct Scripts {
    pub(crate) exact_acquire: Script,
    pub(crate) exact_cancel: Script,
    pub(crate) exact_correct: Script,
    pub(crate) exact_complete: Script,
    pub(crate) approx_acquire: Script,
    pub(crate) approx_adjust: Script,
    pub(crate) lease_acquire: Script,
    pub(crate) lease_renew: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    exact_acquire: Script::new(include_str!("lua/exact_acquire.lua")),
    exact_cancel: Script::new(include_str!("lua/exact_cancel.lua")),
    exact_correct: Script::new(include_str!("lua/exact_correct.lua")),
    exact_complete: Script::new(include_str!("lua/exact_complete.lua")),
    approx_acquire: Script::new(include_str!("lua/approx_acquire.lua")),
    approx_adjust: Script::new(include_str!("lua/approx_adjust.lua")),
    lease_acquire: Script::new(include_str!("lua/lease_acquire.lua")),
    lease_renew: Script::new(include_str!("lua/lease_renew.lua")),
});
