/* The escape attempts the workspace's root makes in tests/run/escape.rs, one
 * per subcommand. Each kernel call prints one line, "<what>: ok" or
 * "<what>: <ERRNO NAME>", so the test asserts exactly how it failed.
 * Arguments are chosen so that a call that does get through changes
 * nothing on the machine (invalid clock ids, empty buffers, no writes).
 * Built static with gcc at test time: the images carry no libc of ours. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/xattr.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/timex.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, long r) {
    if (r < 0) {
        printf("%s: %s\n", what, strerrorname_np(errno));
    } else {
        printf("%s: ok\n", what);
    }
    fflush(stdout);
}

/* cgroup v1 release_agent: an existing controller's hierarchy and a new
 * named one (whose root, release_agent included, is in view even in a
 * cgroup namespace), then their release_agent. */
static void cgroup(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s-memory", dir);
    mkdir(path, 0700);
    report("mount cgroup v1 memory", mount("cgroup", path, "cgroup", 0, "memory"));
    snprintf(path, sizeof path, "%s-memory/release_agent", dir);
    report("open memory hierarchy's release_agent for writing", open(path, O_WRONLY));
    snprintf(path, sizeof path, "%s-named", dir);
    mkdir(path, 0700);
    report("mount cgroup v1 named hierarchy", mount("cgroup", path, "cgroup", 0, "none,name=cvmd_escape"));
    snprintf(path, sizeof path, "%s-named/release_agent", dir);
    report("open new hierarchy's release_agent for writing", open(path, O_WRONLY));
    /* Any release_agent already visible (a hierarchy root in view). */
    const char *ctrls[] = {"memory", "pids", "cpu,cpuacct", "devices", "freezer", "blkio", "systemd", "rdma", "misc", NULL};
    int seen = 0;
    for (int i = 0; ctrls[i]; i++) {
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s/release_agent", ctrls[i]);
        if (access(path, F_OK) == 0) {
            seen = 1;
            char what[4200];
            snprintf(what, sizeof what, "open %s for writing", path);
            report(what, open(path, O_WRONLY));
        }
    }
    if (!seen)
        printf("no release_agent under /sys/fs/cgroup\n");
}

/* open_by_handle_at on a file bind-mounted from outside ("shocker"): the
 * file's own handle, then a forged one for inode 2, the root of the
 * outer file system (ext4/xfs FILEID_INO32_GEN). */
static void handle(const char *path) {
    struct {
        struct file_handle fh;
        unsigned char bytes[MAX_HANDLE_SZ];
    } h;
    h.fh.handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    report("name_to_handle_at", name_to_handle_at(AT_FDCWD, path, &h.fh, &mount_id, 0));
    int mfd = open(path, O_RDONLY);
    if (mfd < 0) {
        report("open the bound file", mfd);
        return;
    }
    report("open_by_handle_at (the file's own handle)", open_by_handle_at(mfd, &h.fh, O_RDONLY));
    struct {
        struct file_handle fh;
        unsigned int ino, gen;
    } forged = {{8, 1}, 2, 0};
    int root = open_by_handle_at(mfd, &forged.fh, O_RDONLY | O_DIRECTORY);
    report("open_by_handle_at (forged handle of the outer root inode 2)", root);
}

/* A block device of the outer machine: mknod, open, mount. */
static void blockdev(unsigned maj, unsigned min, const char *dir) {
    const char *node = "/tmp/escape-blk";
    unlink(node);
    report("mknod block device", mknod(node, S_IFBLK | 0600, makedev(maj, min)));
    report("open block device", open(node, O_RDONLY));
    mkdir(dir, 0700);
    report("mount block device", mount(node, dir, "ext4", MS_RDONLY, NULL));
}

/* The syscalls the seccomp profile refuses, with arguments that do
 * nothing when a call gets through. */
static void syscalls(void) {
    struct timespec ts = {0, 0};
    struct timex tx = {0};
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0xffffffffUL));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    int devnull = open("/dev/null", O_RDONLY);
    report("finit_module", syscall(SYS_finit_module, devnull, "", 0));
    report("delete_module", syscall(SYS_delete_module, "cvmd_escape_none", O_NONBLOCK));
    report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    report("bpf", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, NULL, 0));
    report("clock_settime", syscall(SYS_clock_settime, 4242, &ts));
    report("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    report("adjtimex", syscall(SYS_adjtimex, &tx));
    report("swapon", syscall(SYS_swapon, "/nonexistent-swap", 0));
    report("swapoff", syscall(SYS_swapoff, "/nonexistent-swap"));
    report("acct", syscall(SYS_acct, "/nonexistent-acct"));
    report("quotactl", syscall(SYS_quotactl, 0, NULL, 0, NULL));
    report("iopl", syscall(SYS_iopl, 3));
    report("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));
    report("syslog", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("request_key", syscall(SYS_request_key, "user", "cvmd-escape", NULL, 0));
    report("add_key", syscall(SYS_add_key, "user", "cvmd-escape", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    report("name_to_handle_at", syscall(SYS_name_to_handle_at, -1, "", NULL, NULL, 0));
}

/* A process of the outer machine that shares only the workspace's PID
 * namespace (the test puts it there with nsenter): found by `marker` in its
 * command line, then attached to, and its root (the outer mount namespace)
 * used to reach each path. */
static void outside(const char *marker, int npaths, char **paths) {
    char path[4200], cmdline[4096];
    pid_t found = 0;
    for (pid_t pid = 2; pid < 1 << 22 && !found; pid++) {
        snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
        close(fd);
        for (ssize_t i = 0; i + 1 < n; i++)
            if (!cmdline[i])
                cmdline[i] = ' ';
        if (n > 0 && (cmdline[n] = 0, strstr(cmdline, marker)) && pid != getpid())
            found = pid;
    }
    if (!found) {
        printf("no process with %s in view\n", marker);
        return;
    }
    printf("outside process in view\n");
    long r = ptrace(PTRACE_ATTACH, found, NULL, NULL);
    report("ptrace attach", r);
    if (r == 0) {
        waitpid(found, NULL, __WALL);
        ptrace(PTRACE_DETACH, found, NULL, NULL);
    }
    for (int i = 0; i < npaths; i++) {
        snprintf(path, sizeof path, "/proc/%d/root%s", found, paths[i]);
        char what[4300];
        snprintf(what, sizeof what, "open outside %s", paths[i]);
        report(what, open(path, O_RDONLY | O_PATH));
    }
}

/* A file the workspace's overlay takes from a lazily served (FUSE) lower
 * layer: reads at absurd offsets and of absurd sizes, and calls a FUSE
 * server may not implement. Each must answer, an errno or ok, rather
 * than hang or take the server down; then eight readers read it whole at
 * once. */
static void lazy_reads(const char *path) {
    int fd = open(path, O_RDONLY);
    report("open the lazily served file", fd);
    if (fd < 0)
        return;
    static char buf[1 << 20];
    report("pread at 2^40", pread(fd, buf, 4096, 1LL << 40));
    report("pread at 2^62", pread(fd, buf, 4096, 1LL << 62));
    report("pread at -1", pread(fd, buf, 4096, -1));
    report("lseek SEEK_DATA at 2^40", lseek(fd, 1LL << 40, SEEK_DATA));
    report("lseek SEEK_HOLE at 0", lseek(fd, 0, SEEK_HOLE));
    report("readahead of 2^40 bytes", readahead(fd, 0, 1LL << 40));
    int r = posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
    if (r) {
        errno = r;
        r = -1;
    }
    report("posix_fadvise WILLNEED", r);
    int flags = 0;
    report("ioctl FS_IOC_GETFLAGS", ioctl(fd, FS_IOC_GETFLAGS, &flags));
    report("ioctl FS_IOC_SETFLAGS immutable", (flags |= FS_IMMUTABLE_FL, ioctl(fd, FS_IOC_SETFLAGS, &flags)));
    report("flock", flock(fd, LOCK_EX | LOCK_NB));
    void *m = mmap(NULL, 1 << 20, PROT_READ, MAP_SHARED, fd, 0);
    report("mmap shared", m == MAP_FAILED ? -1 : 0);
    if (m != MAP_FAILED)
        munmap(m, 1 << 20);
    report("fsync", fsync(fd));
    close(fd);
    pid_t kids[8];
    for (int i = 0; i < 8; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            int f = open(path, O_RDONLY);
            ssize_t n;
            while ((n = read(f, buf, sizeof buf)) > 0)
                ;
            _exit(f < 0 || n < 0);
        }
    }
    int failed = 0;
    for (int i = 0; i < 8; i++) {
        int st = 1;
        if (kids[i] < 0 || waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
            failed++;
    }
    printf("eight whole reads at once: %s\n", failed ? "EIO" : "ok");
    fflush(stdout);
}

/* Writes to a lazily served file: they must land in the workspace's own
 * upper dir (a copy-up), never in the lower layer, the chunk cache or the
 * published layer. */
static void clobber(const char *path) {
    int fd = open(path, O_RDWR);
    report("open the lazily served file for writing", fd);
    if (fd >= 0) {
        report("write over its first bytes", pwrite(fd, "hostile", 7, 0));
        report("fchmod 06777", fchmod(fd, 06777));
        report("fchown 0:0", fchown(fd, 0, 0));
        report("fsetxattr user.cvmd", fsetxattr(fd, "user.cvmd", "x", 1, 0));
        report("ftruncate to 7 bytes", ftruncate(fd, 7));
        close(fd);
    }
    report("truncate by path to 3 bytes", truncate(path, 3));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: attempt cgroup DIR | handle FILE | blockdev MAJ MIN DIR | open-w PATH | remount-rw PATH | syscalls | outside MARKER PATH... | read PATH | lazy-reads PATH | clobber PATH\n");
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "cgroup") && argc == 3) {
        cgroup(argv[2]);
    } else if (!strcmp(cmd, "handle") && argc == 3) {
        handle(argv[2]);
    } else if (!strcmp(cmd, "blockdev") && argc == 5) {
        blockdev(atoi(argv[2]), atoi(argv[3]), argv[4]);
    } else if (!strcmp(cmd, "open-w") && argc == 3) {
        char what[4200];
        snprintf(what, sizeof what, "open %s for writing", argv[2]);
        report(what, open(argv[2], O_WRONLY));
    } else if (!strcmp(cmd, "remount-rw") && argc == 3) {
        char what[4200];
        snprintf(what, sizeof what, "remount %s read-write", argv[2]);
        report(what, mount(NULL, argv[2], NULL, MS_REMOUNT | MS_BIND, NULL));
    } else if (!strcmp(cmd, "syscalls")) {
        syscalls();
    } else if (!strcmp(cmd, "outside") && argc >= 3) {
        outside(argv[2], argc - 3, argv + 3);
    } else if (!strcmp(cmd, "lazy-reads") && argc == 3) {
        lazy_reads(argv[2]);
    } else if (!strcmp(cmd, "clobber") && argc == 3) {
        clobber(argv[2]);
    } else if (!strcmp(cmd, "read") && argc == 3) {
        char what[4200];
        snprintf(what, sizeof what, "open %s", argv[2]);
        report(what, open(argv[2], O_RDONLY));
    } else {
        fprintf(stderr, "attempt: unknown command %s\n", cmd);
        return 2;
    }
    return 0;
}
