//! An idempotency key clones without allocating, however it was made: the stack clones the
//! key of every call (for the header, the report and the copy of the head kept for
//! replays), and a value whose bytes came from a `Vec` allocates on its first clone.

use resilient_http::idempotency::IdempotencyKey;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the allocations made on the current thread (a test's own, whatever else the
/// harness does meanwhile).
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a thread-local `Cell` without a destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type MakeKey = dyn Fn() -> IdempotencyKey;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (out, ALLOCS.with(Cell::get) - before)
}

#[test]
fn every_key_is_one_allocation_and_its_clones_none() {
    let ns = uuid::Uuid::from_u128(7);
    let longest = "y".repeat(IdempotencyKey::MAX_LEN);
    let makers: Vec<(&str, Box<MakeKey>)> = vec![
        ("random", Box::new(IdempotencyKey::random)),
        (
            "operation id",
            Box::new(move || IdempotencyKey::from_operation_id(&ns, "op-1")),
        ),
        (
            "short",
            Box::new(|| IdempotencyKey::new("order-1234/charge").unwrap()),
        ),
        (
            "one character",
            Box::new(|| IdempotencyKey::new("x").unwrap()),
        ),
        (
            "longest",
            Box::new(move || IdempotencyKey::new(&longest).unwrap()),
        ),
    ];
    // The thread's random generator is made on first use.
    let _ = IdempotencyKey::random();
    for (name, make) in makers {
        let (key, made) = allocations(make);
        assert_eq!(made, 1, "{name}: making the key");
        let (clones, cloned) = allocations(|| {
            let a = key.clone();
            let b = key.as_header_value().clone();
            let c = a.clone().into_header_value();
            (a, b, c)
        });
        assert_eq!(cloned, 0, "{name}: cloning it");
        assert_eq!(clones.0.as_str(), key.as_str());
        drop((key, clones));
    }
}
