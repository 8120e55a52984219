//! The seccomp filter every box runs under: system calls a box never needs are refused.
//!
//! A classic BPF program, assembled here and handed to bubblewrap (`--seccomp`), which installs
//! it just before boxd starts, after the box's namespaces and mounts are made. It answers
//! `EPERM` to calls that reach the kernel's shared state (modules, kexec, keyrings, the clock,
//! swap, accounting, BPF, perf, the kernel log), to every way of making mounts or new
//! namespaces (including `clone` with a `CLONE_NEW*` flag), to `setns`, and to
//! `open_by_handle_at` (the classic container escape through file handles), to `io_uring`
//! (whose operations bypass this filter), to `pidfd_getfd`, to `AF_PACKET` and `AF_VSOCK`
//! sockets, to a `personality` that turns off address randomisation, and to tracing or reading
//! the memory of PID 1 (boxd). `clone3` gets
//! `ENOSYS`, so that the C library falls back to `clone`, whose flags the filter can read. Any
//! other architecture's calling convention (x32, i386 through `int 0x80`) kills the process.

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `__X32_SYSCALL_BIT`: x32 system call numbers have it set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Namespace flags of `clone` (`CLONE_NEW*`, including `CLONE_NEWTIME`): a box makes none.
const CLONE_NEW_FLAGS: u32 = 0x0002_0000 // CLONE_NEWNS
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0000_0080; // CLONE_NEWTIME

/// System calls a box is refused outright, by name and x86-64 number.
pub const DENIED: &[(&str, u32)] = &[
    ("init_module", 175),
    ("finit_module", 313),
    ("delete_module", 176),
    ("kexec_load", 246),
    ("kexec_file_load", 320),
    ("reboot", 169),
    ("mount", 165),
    ("umount2", 166),
    ("pivot_root", 155),
    ("chroot", 161),
    ("open_tree", 428),
    ("move_mount", 429),
    ("fsopen", 430),
    ("fsconfig", 431),
    ("fsmount", 432),
    ("fspick", 433),
    ("mount_setattr", 442),
    ("unshare", 272),
    ("setns", 308),
    ("keyctl", 250),
    ("add_key", 248),
    ("request_key", 249),
    ("bpf", 321),
    ("perf_event_open", 298),
    ("userfaultfd", 323),
    ("open_by_handle_at", 304),
    ("name_to_handle_at", 303),
    ("acct", 163),
    ("swapon", 167),
    ("swapoff", 168),
    ("syslog", 103),
    ("settimeofday", 164),
    ("clock_settime", 227),
    ("clock_adjtime", 305),
    ("adjtimex", 159),
    ("iopl", 172),
    ("ioperm", 173),
    ("quotactl", 179),
    ("lookup_dcookie", 212),
    ("uselib", 134),
    ("vhangup", 153),
    ("process_vm_writev", 311),
    ("io_uring_setup", 425),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("pidfd_getfd", 438),
];

/// Socket families a box may not open (`socket`'s first argument): `AF_PACKET` (raw frames on
/// the box's interfaces) and `AF_VSOCK` (the host's hypervisor sockets).
pub const DENIED_SOCKET_FAMILIES: &[(&str, u32)] = &[("AF_PACKET", 17), ("AF_VSOCK", 40)];

/// `personality`'s flag that turns address-space randomisation off; a box may not set it.
const ADDR_NO_RANDOMIZE: u32 = 0x0004_0000;

/// `personality(0xffffffff)` only asks for the current persona.
const PERSONALITY_QUERY: u32 = 0xffff_ffff;

const SYS_CLONE: u32 = 56;
const SYS_CLONE3: u32 = 435;
const SYS_SOCKET: u32 = 41;
const SYS_PERSONALITY: u32 = 135;
const SYS_PTRACE: u32 = 101;
const SYS_PROCESS_VM_READV: u32 = 310;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARG0_LOW_OFFSET: u32 = 16;
const ARG0_HIGH_OFFSET: u32 = 20;
const ARG1_LOW_OFFSET: u32 = 24;
const ARG1_HIGH_OFFSET: u32 = 28;

/// One instruction whose jumps name labels, resolved by [`assemble`].
#[derive(Debug, Clone, Copy)]
enum Insn {
    Load(u32),
    /// Compare with `k`; on true jump to the label, else fall through.
    JumpIf(u16, u32, Label),
    /// Compare with `k`; on true fall through, else jump to the label.
    JumpUnless(u16, u32, Label),
    Ret(u32),
    Mark(Label),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Kill,
    Eperm,
    Enosys,
    Clone,
    Socket,
    Personality,
    Ptrace,
    VmRead,
    Allow,
}

/// The filter as the raw `struct sock_filter` array bubblewrap reads.
pub(crate) fn filter() -> Vec<u8> {
    let mut program = vec![
        Insn::Load(ARCH_OFFSET),
        Insn::JumpUnless(JEQ_K, AUDIT_ARCH_X86_64, Label::Kill),
        Insn::Load(NR_OFFSET),
        Insn::JumpIf(JGE_K, X32_SYSCALL_BIT, Label::Kill),
    ];
    for (_, nr) in DENIED {
        program.push(Insn::JumpIf(JEQ_K, *nr, Label::Eperm));
    }
    program.extend([
        Insn::JumpIf(JEQ_K, SYS_CLONE3, Label::Enosys),
        Insn::JumpIf(JEQ_K, SYS_CLONE, Label::Clone),
        Insn::JumpIf(JEQ_K, SYS_SOCKET, Label::Socket),
        Insn::JumpIf(JEQ_K, SYS_PERSONALITY, Label::Personality),
        Insn::JumpIf(JEQ_K, SYS_PTRACE, Label::Ptrace),
        Insn::JumpIf(JEQ_K, SYS_PROCESS_VM_READV, Label::VmRead),
        Insn::Ret(RET_ALLOW),
        Insn::Mark(Label::Clone),
        Insn::Load(ARG0_LOW_OFFSET),
        Insn::JumpIf(JSET_K, CLONE_NEW_FLAGS, Label::Eperm),
        Insn::Ret(RET_ALLOW),
        // socket(family, …): the family is an int, so the low word decides.
        Insn::Mark(Label::Socket),
        Insn::Load(ARG0_LOW_OFFSET),
    ]);
    for (_, family) in DENIED_SOCKET_FAMILIES {
        program.push(Insn::JumpIf(JEQ_K, *family, Label::Eperm));
    }
    program.extend([
        Insn::Ret(RET_ALLOW),
        // personality(persona): a query is fine; a persona without randomisation is not.
        Insn::Mark(Label::Personality),
        Insn::Load(ARG0_LOW_OFFSET),
        Insn::JumpIf(JEQ_K, PERSONALITY_QUERY, Label::Allow),
        Insn::JumpIf(JSET_K, ADDR_NO_RANDOMIZE, Label::Eperm),
        Insn::Ret(RET_ALLOW),
        // ptrace(request, pid, …) and process_vm_readv(pid, …) on PID 1, boxd: refused, so no
        // process of the box reads or steers the agent that answers the host. (A pid is an int;
        // a high word other than zero or all ones is no pid 1.)
        Insn::Mark(Label::Ptrace),
        Insn::Load(ARG1_HIGH_OFFSET),
        Insn::JumpUnless(JEQ_K, 0, Label::Allow),
        Insn::Load(ARG1_LOW_OFFSET),
        Insn::JumpIf(JEQ_K, 1, Label::Eperm),
        Insn::Ret(RET_ALLOW),
        Insn::Mark(Label::VmRead),
        Insn::Load(ARG0_HIGH_OFFSET),
        Insn::JumpUnless(JEQ_K, 0, Label::Allow),
        Insn::Load(ARG0_LOW_OFFSET),
        Insn::JumpIf(JEQ_K, 1, Label::Eperm),
        Insn::Mark(Label::Allow),
        Insn::Ret(RET_ALLOW),
        Insn::Mark(Label::Eperm),
        Insn::Ret(RET_ERRNO | EPERM),
        Insn::Mark(Label::Enosys),
        Insn::Ret(RET_ERRNO | ENOSYS),
        Insn::Mark(Label::Kill),
        Insn::Ret(RET_KILL_PROCESS),
    ]);
    assemble(&program)
}

/// Resolves labels into relative jumps and encodes each instruction (8 bytes).
fn assemble(program: &[Insn]) -> Vec<u8> {
    let mut at = Vec::new();
    let mut pc = 0usize;
    for insn in program {
        match insn {
            Insn::Mark(label) => at.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let target = |label: Label, pc: usize| -> u8 {
        let (_, to) = at.iter().find(|(l, _)| *l == label).copied().unwrap_or((label, pc + 1));
        u8::try_from(to - pc - 1).unwrap_or(u8::MAX)
    };
    let mut bytes = Vec::with_capacity(pc * 8);
    let mut pc = 0usize;
    let mut emit = |code: u16, jt: u8, jf: u8, k: u32| {
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.push(jt);
        bytes.push(jf);
        bytes.extend_from_slice(&k.to_ne_bytes());
    };
    for insn in program {
        match *insn {
            Insn::Mark(_) => continue,
            Insn::Load(offset) => emit(LD_W_ABS, 0, 0, offset),
            Insn::JumpIf(code, k, label) => emit(code, target(label, pc), 0, k),
            Insn::JumpUnless(code, k, label) => emit(code, 0, target(label, pc), k),
            Insn::Ret(k) => emit(RET_K, 0, 0, k),
        }
        pc += 1;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_whole_instructions_with_jumps_that_land_inside_it() {
        let bytes = filter();
        assert_eq!(bytes.len() % 8, 0);
        let count = bytes.len() / 8;
        assert!(count > DENIED.len() + 10);
        for (pc, insn) in bytes.chunks(8).enumerate() {
            let code = u16::from_ne_bytes([insn[0], insn[1]]);
            if code & 0x07 == 0x05 {
                assert!(pc + 1 + usize::from(insn[2]) < count, "jt of {pc} leaves the program");
                assert!(pc + 1 + usize::from(insn[3]) < count, "jf of {pc} leaves the program");
            }
        }
        let last = &bytes[bytes.len() - 8..];
        assert_eq!(u32::from_ne_bytes([last[4], last[5], last[6], last[7]]), RET_KILL_PROCESS);
    }
}
