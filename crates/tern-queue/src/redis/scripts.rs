//! The Lua scripts, each prefixed with the shared helpers of `scripts/common.lua`.
//!
//! Scripts run with EVALSHA; when Redis does not know one (after a restart or failover) it is loaded and
//! the call repeated (`redis::Script` does this for single calls; pipelines reload and resend the failed
//! entries).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/common.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(INTAKE, "scripts/intake.lua");
script!(INTAKE_DONE, "scripts/intake_done.lua");
script!(MATERIALISE, "scripts/materialise.lua");
script!(CLAIM, "scripts/claim.lua");
script!(COMPLETE, "scripts/complete.lua");
script!(EXTEND, "scripts/extend.lua");
script!(RELEASE, "scripts/release.lua");
script!(REAP, "scripts/reap.lua");
script!(ADMIN, "scripts/admin.lua");
script!(SUSPEND, "scripts/suspend.lua");
script!(RESUME, "scripts/resume.lua");
script!(READ, "scripts/read.lua");
script!(HOLD, "scripts/hold.lua");
script!(UNHOLD, "scripts/unhold.lua");

/// Every script, for loading them all up front.
pub(crate) fn all() -> [&'static Script; 14] {
    [
        &INTAKE,
        &INTAKE_DONE,
        &MATERIALISE,
        &CLAIM,
        &COMPLETE,
        &EXTEND,
        &RELEASE,
        &REAP,
        &ADMIN,
        &SUSPEND,
        &RESUME,
        &READ,
        &HOLD,
        &UNHOLD,
    ]
}
