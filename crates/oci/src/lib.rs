//! The OCI side of a workspace: its bundle (`bundle`: config.json and the
//! init it runs), the runtime CLI driven through a spawner seam
//! (`runtime`), exec into the running container (`exec`), and the one
//! reaper every child of PID 1 is waited on through (`reaper`, `pidfd`).

pub mod bundle;
pub mod exec;
pub mod pidfd;
pub mod proc_status;
pub mod reaper;
pub mod runtime;
