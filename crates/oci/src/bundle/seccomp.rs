//! The workspace's seccomp filter under plain runc (sysbox-runc brings its
//! own and is given none).
//!
//! An allow-list with `EPERM` for everything else, as the default profile
//! of Docker and containerd does (moby `profiles/seccomp/default.json`),
//! so a system call added to the kernel later is refused until someone
//! decides it is safe. It differs from that profile where the workspace
//! is a whole machine rather than one service, always inside a user
//! namespace of its own (`bundle::spec`), where the kernel already scopes
//! what these calls reach to that namespace:
//!
//! - allowed, because systemd and Docker-in-the-workspace need them and a
//!   user namespace confines them: `mount` and the new mount API,
//!   `umount2`, `pivot_root`, `unshare`, `setns`, `clone`/`clone3` with any
//!   namespace flags, `sethostname`, `chroot`, `keyctl` (systemd joins a
//!   session keyring per service), `reboot` (inside a PID namespace the
//!   kernel turns it into the end of the workspace's init), `ptrace` and
//!   its relatives (debuggers; the kernel refuses targets outside the
//!   namespace);
//! - refused whatever the capabilities, because the kernel does not
//!   scope them to a namespace and they reach the node: loading, removing
//!   and replacing kernel code (`init_module`, `finit_module`,
//!   `delete_module`, `kexec_load`, `kexec_file_load`), file handles that
//!   bypass the mount tree (`open_by_handle_at` and `name_to_handle_at`:
//!   the "shocker" escape; systemd falls back when they fail), `bpf`
//!   (programs run in the node's kernel; BPF tokens are not delegated),
//!   `perf_event_open`, the node's clock (`clock_settime`, `settimeofday`,
//!   `stime`, `adjtimex`, `clock_adjtime`), swap (`swapon`, `swapoff`),
//!   process accounting (`acct`), disk quotas (`quotactl`), I/O ports
//!   (`iopl`, `ioperm`), the kernel log (`syslog`), `add_key` and
//!   `request_key` (the latter makes the node's kernel run
//!   `/sbin/request-key` on the node; systemd ignores the former's
//!   failure), `userfaultfd` (a tool for widening kernel races),
//!   `io_uring_*` (refused by Docker's default since 2023 for its kernel
//!   bugs), `lookup_dcookie`, `nfsservctl`, `uselib`, `vm86`, and the
//!   obsolete calls no libc makes.
//!
//! `personality` is limited to the values Docker allows (Linux, 32-bit,
//! `UNAME26`, and the query), as READ_IMPLIES_EXEC and friends weaken
//! memory protections; `socket` to every family but `AF_VSOCK`, which
//! talks to the hypervisor under the node, as in Docker's profile. Unlike
//! Docker's, `adjtimex` and `clock_adjtime` are refused even for reading
//! the clock's state: nothing a workspace runs needs them, and the write
//! half acts on the node's clock.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{error::spec_err, BundleError};

/// Calls every process may make: files, memory, processes, signals,
/// time reading, sockets, IPC, scheduling, and the namespace and mount
/// calls a user namespace scopes (see the module doc).
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    // Files and directories.
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "getxattrat",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "listxattrat", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat",
    "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe", "pipe2", "pread64",
    "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "rmdir", "sendfile", "sendfile64", "setxattr", "setxattrat", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vmsplice", "write", "writev", "ioctl", "file_getattr",
    "file_setattr",
    // Events and polling.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_init", "fanotify_mark",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit",
    "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect",
    "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64",
    // Memory.
    "brk", "cachestat", "get_mempolicy", "madvise", "map_shadow_stack", "mbind", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mremap", "mseal", "msync", "munlock", "munlockall", "munmap", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "remap_file_pages", "set_mempolicy", "set_mempolicy_home_node",
    // Processes, credentials, limits, scheduling.
    "arch_prctl", "capget", "capset", "clone", "clone3", "execve", "execveat", "exit",
    "exit_group", "fork", "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "get_thread_area", "gettid", "getuid",
    "getuid32", "ioprio_get", "ioprio_set", "kcmp", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr",
    "modify_ldt", "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64",
    "process_madvise", "process_mrelease", "process_vm_readv", "process_vm_writev", "ptrace",
    "rseq", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "set_thread_area", "set_tid_address", "setuid", "setuid32", "ugetrlimit", "uname", "vfork",
    "wait4", "waitid", "waitpid", "times", "sysinfo", "vhangup",
    // Signals and futexes.
    "alarm", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    "kill", "pause", "restart_syscall", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack", "signal", "sigpending",
    "sigprocmask", "sigreturn", "sigsuspend", "tgkill", "tkill",
    // Reading time and sleeping.
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "gettimeofday", "nanosleep", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    // Sockets and System V / POSIX IPC.
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg",
    "sendto", "setsockopt", "shutdown", "socketcall", "socketpair", "ipc", "msgctl", "msgget",
    "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat",
    "shmctl", "shmdt", "shmget", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
    // Namespaces and mounts, scoped by the workspace's user namespace.
    "chroot", "fsconfig", "fsmount", "fsopen", "fspick", "keyctl", "mount", "mount_setattr",
    "move_mount", "open_tree", "pivot_root", "reboot", "setdomainname", "sethostname", "setns",
    "umount", "umount2", "unshare", "listmount", "statmount",
];

/// Calls refused whatever the capabilities: they reach the node (see the
/// module doc). Not in [`ALLOWED`]; listed for the tests and the doc.
#[rustfmt::skip]
pub const REFUSED: &[&str] = &[
    "acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_adjtime64", "clock_settime",
    "clock_settime64", "create_module", "delete_module", "finit_module", "get_kernel_syms",
    "init_module", "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl",
    "kexec_file_load", "kexec_load", "lookup_dcookie", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "perf_event_open", "query_module", "quotactl", "quotactl_fd",
    "request_key", "settimeofday", "stime", "swapoff", "swapon", "syslog", "uselib", "userfaultfd",
    "ustat", "vm86", "vm86old", "_sysctl",
];

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (the query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The architectures a process on this machine's kernel may use: the
/// native one and its compat modes, each filtered alike.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

fn rule(names: &[&str]) -> Result<LinuxSyscall, BundleError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(spec_err("seccomp rule"))
}

/// `AF_VSOCK` (linux/socket.h).
const AF_VSOCK: u64 = 40;

/// `name` allowed when its first argument compares to `value` by `op`.
fn with_arg(name: &str, value: u64, op: LinuxSeccompOperator) -> Result<LinuxSyscall, BundleError> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(op)
        .build()
        .map_err(spec_err("seccomp argument"))?;
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg])
        .build()
        .map_err(spec_err("seccomp rule"))
}

/// The filter for the workspace's processes (init and every exec).
pub fn profile() -> Result<LinuxSeccomp, BundleError> {
    let mut syscalls = vec![rule(ALLOWED)?];
    for value in PERSONALITIES {
        syscalls.push(with_arg(
            "personality",
            *value,
            LinuxSeccompOperator::ScmpCmpEq,
        )?);
    }
    syscalls.push(with_arg(
        "socket",
        AF_VSOCK,
        LinuxSeccompOperator::ScmpCmpNe,
    )?);
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(spec_err("seccomp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_calls_are_never_allowed() {
        for name in REFUSED {
            assert!(
                !ALLOWED.contains(name),
                "{name} is both allowed and refused"
            );
        }
        let p = profile().unwrap();
        let allowed: Vec<&str> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect();
        for name in REFUSED {
            assert!(!allowed.contains(name), "{name} is in the profile");
        }
    }

    #[test]
    fn what_systemd_and_nested_containers_need_is_allowed() {
        for name in [
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "keyctl",
            "open_tree",
            "move_mount",
            "mount_setattr",
            "sethostname",
            "reboot",
            "chroot",
        ] {
            assert!(ALLOWED.contains(&name), "{name}");
        }
    }

    #[test]
    fn default_refuses_with_eperm_on_every_arch() {
        let p = profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(libc::EPERM as u32));
        assert!(!p.architectures().as_ref().unwrap().is_empty());
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        // personality only with listed values.
        let personality: Vec<_> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == "personality"))
            .collect();
        assert_eq!(personality.len(), PERSONALITIES.len());
        assert!(personality.iter().all(|s| s.args().is_some()));
        let socket: Vec<_> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == "socket"))
            .collect();
        assert_eq!(socket.len(), 1, "socket only through its AF_VSOCK rule");
        let arg = socket[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.value(), arg.op()),
            (AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)
        );
    }

    #[test]
    fn no_name_twice() {
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a name is listed twice");
    }
}
