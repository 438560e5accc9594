//! The seccomp filter `run` installs in the child before `exec` (SPEC §8):
//! native `open`, `openat`, `openat2`, `creat`, `bind` and the tree calls
//! that name a path (`stat`, `mkdir`, `rename`, ...) go to the supervisor
//! as user notifications; everything else, and every syscall of
//! a foreign architecture (x32, i386 on x86_64), runs untouched.
//!
//! Everything here that runs in the child after `fork` is a raw syscall on
//! memory prepared before the fork: no allocation, no locks.

use std::io;
use std::os::fd::RawFd;

/// `AUDIT_ARCH_*` of the architectures `run` knows the syscall numbers of.
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7;

/// Syscall numbers at and above this are x32's, on an x86_64 kernel.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The tree calls of SPEC §8 (v3), and the calls on directory streams.
const TREE_CALLS: [libc::c_long; 16] = [
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    // Directory streams: answered for placeholders only, one `fstat` of
    // the fd telling them apart once the first placeholder exists.
    libc::SYS_fstat,
    libc::SYS_getdents64,
];

/// The older tree calls only x86_64 has, and `lseek`.
#[cfg(target_arch = "x86_64")]
const LEGACY_TREE_CALLS: [libc::c_long; 11] = [
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_getdents,
    libc::SYS_lseek,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_TREE_CALLS: [libc::c_long; 1] = [libc::SYS_lseek];

/// The syscalls the supervisor brokers.
pub fn trapped_syscalls() -> Vec<u32> {
    let mut nrs = vec![
        libc::SYS_openat as u32,
        libc::SYS_openat2 as u32,
        libc::SYS_bind as u32,
    ];
    #[cfg(target_arch = "x86_64")]
    nrs.extend([libc::SYS_open as u32, libc::SYS_creat as u32]);
    nrs.extend(
        TREE_CALLS
            .iter()
            .chain(&LEGACY_TREE_CALLS)
            .map(|&nr| nr as u32),
    );
    nrs
}

/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The classic-BPF program: check the architecture, then the number.
pub fn program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let mut trapped = trapped_syscalls();
    trapped.sort_unstable();
    let tree = tree_len(trapped.len());
    let checks = u8::try_from(tree).expect("a decision tree of a few dozen jumps");
    let mut prog = vec![stmt(BPF_LD | BPF_W | BPF_ABS, ARCH_OFFSET)];
    // Layout after the arch load: [arch check] [nr load] [x32 check]
    // [decision tree] [ALLOW] [USER_NOTIF].
    #[cfg(target_arch = "x86_64")]
    let x32_checks = 1u8;
    #[cfg(not(target_arch = "x86_64"))]
    let x32_checks = 0u8;
    // From the arch check, ALLOW is 1 (nr load) + x32 + checks ahead.
    prog.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        NATIVE_ARCH,
        0,
        1 + x32_checks + checks,
    ));
    prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET));
    #[cfg(target_arch = "x86_64")]
    prog.push(jump(
        BPF_JMP | libc::BPF_JGE | BPF_K,
        X32_SYSCALL_BIT,
        checks,
        0,
    ));
    let allow = prog.len() + tree;
    decide(&trapped, allow, &mut prog);
    prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_USER_NOTIF));
    prog
}

/// Numbers left to a chain of `JEQ`s rather than split further.
const LEAF: usize = 3;

/// Instructions in the decision tree over `n` numbers.
fn tree_len(n: usize) -> usize {
    if n <= LEAF {
        n
    } else {
        1 + tree_len(n / 2) + tree_len(n - n / 2)
    }
}

/// Appends a binary decision tree over the sorted `nrs` that ends at
/// `allow` (the `ALLOW` instruction's index; `USER_NOTIF` follows it) for
/// numbers not in `nrs`. Any syscall then takes a handful of comparisons
/// instead of up to one per trapped number. That matters at install time
/// too: the kernel runs the filter over every syscall number to cache the
/// ones it always allows, in the child, on the way to every exec.
fn decide(nrs: &[u32], allow: usize, prog: &mut Vec<libc::sock_filter>) {
    use libc::{BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K};
    let ahead = |from: usize, to: usize| u8::try_from(to - from - 1).expect("a short jump");
    if nrs.len() <= LEAF {
        for (i, &nr) in nrs.iter().enumerate() {
            let at = prog.len();
            let last = i + 1 == nrs.len();
            let miss = if last { ahead(at, allow) } else { 0 };
            prog.push(jump(
                BPF_JMP | BPF_JEQ | BPF_K,
                nr,
                ahead(at, allow + 1),
                miss,
            ));
        }
        return;
    }
    let (low, high) = nrs.split_at(nrs.len() / 2);
    let skip_low = u8::try_from(tree_len(low.len())).expect("a short jump");
    prog.push(jump(BPF_JMP | BPF_JGE | BPF_K, high[0], skip_low, 0));
    decide(low, allow, prog);
    decide(high, allow, prog);
}

/// Sets `PR_SET_NO_NEW_PRIVS` and installs `prog` with a new listener,
/// which it returns. Async-signal-safe: meant for a child between fork
/// and exec.
///
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` keeps a signal (Go's `SIGURG`)
/// from restarting a trapped syscall once the supervisor has received it,
/// so no request is sent twice; kernels before 5.19 lack it and get the
/// filter without it.
pub fn install(prog: &[libc::sock_filter]) -> io::Result<RawFd> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let mut flags =
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    loop {
        // SAFETY: `fprog` points at `prog`, which outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        };
        if fd >= 0 {
            return Ok(fd as RawFd);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL)
            && flags & libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0
        {
            flags &= !libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a `seccomp_data` by hand: a tiny cBPF
    /// interpreter for the few instructions it uses.
    fn verdict(prog: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let mut pc = 0;
        let mut acc = 0u32;
        loop {
            let ins = prog[pc];
            let code = u32::from(ins.code);
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                acc = if ins.k == ARCH_OFFSET { arch } else { nr };
                pc += 1;
            } else if code == libc::BPF_RET | libc::BPF_K {
                return ins.k;
            } else {
                let taken = if code & 0xf0 == libc::BPF_JEQ {
                    acc == ins.k
                } else {
                    acc >= ins.k
                };
                pc += 1 + usize::from(if taken { ins.jt } else { ins.jf });
            }
        }
    }

    #[test]
    fn traps_exactly_the_native_brokered_syscalls() {
        let prog = program();
        for nr in trapped_syscalls() {
            assert_eq!(
                verdict(&prog, NATIVE_ARCH, nr),
                libc::SECCOMP_RET_USER_NOTIF
            );
        }
        let trapped = trapped_syscalls();
        for nr in 0..1024 {
            let expected = if trapped.contains(&nr) {
                libc::SECCOMP_RET_USER_NOTIF
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            assert_eq!(verdict(&prog, NATIVE_ARCH, nr), expected, "syscall {nr}");
        }
        let foreign = 0x4000_0003; // AUDIT_ARCH_I386
        assert_eq!(
            verdict(&prog, foreign, libc::SYS_openat as u32),
            libc::SECCOMP_RET_ALLOW
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            verdict(&prog, NATIVE_ARCH, 0x4000_0000 | libc::SYS_openat as u32),
            libc::SECCOMP_RET_ALLOW
        );
    }
}
