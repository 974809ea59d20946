//! Free loopback ports for the processes tests start. They come from below the kernel's ephemeral
//! range (32768 and up on Linux), so the source port of another test's outgoing connection cannot
//! take one between the pick and the bind (port 0 hands out ephemeral ports, and did collide), and
//! a port handed out once is never handed out again by this process. A port another process holds
//! fails the bind check.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

const FIRST: u16 = 20_000;
const END: u16 = 32_768;

/// Where the next search starts, and every port handed out so far.
struct Handed {
    next: u16,
    taken: HashSet<u16>,
}

static HANDED: Mutex<Option<Handed>> = Mutex::new(None);

/// `count` distinct free ports.
pub fn free_ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| free_block(1, &[0])).collect()
}

/// A base port such that, for each of `offsets`, the `len` ports from `base + offset` on are free
/// (`kvctl up` takes consecutive client ports and peer ports 1000 above them), all reserved.
pub fn free_block(len: u16, offsets: &[u16]) -> u16 {
    let mut handed = HANDED.lock().unwrap_or_else(PoisonError::into_inner);
    // Test binaries start at different places, so two run side by side rarely probe the same ports.
    let handed = handed.get_or_insert_with(|| Handed {
        next: FIRST + (std::process::id() % u32::from(END - FIRST)) as u16,
        taken: HashSet::new(),
    });
    let span = offsets.iter().max().copied().unwrap_or(0) + len;
    let ports = |base: u16| {
        offsets
            .iter()
            .flat_map(move |&o| (0..len).map(move |i| base + o + i))
    };
    let mut base = handed.next;
    for _ in FIRST..END {
        if base + span > END {
            base = FIRST;
        }
        if ports(base)
            .all(|p| !handed.taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed.taken.extend(ports(base));
            handed.next = base + len;
            return base;
        }
        base += 1;
    }
    panic!("no free block of {len} ports at offsets {offsets:?} in {FIRST}..{END}");
}
