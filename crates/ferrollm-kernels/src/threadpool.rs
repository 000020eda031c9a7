//! Work splitting across cores for the kernels: a persistent pool.
//!
//! A decode step issues a few hundred small matmuls, each worth a few microseconds of work, so
//! the pool must hand out work far faster than threads can be spawned. Workers are created once
//! and wait for the next job by spinning for a short while (a step's matmuls come back to back),
//! then sleep on a condition variable so an idle process does not burn CPU. The calling thread
//! runs tasks too, so a pool of `n` threads keeps `n - 1` workers.
//!
//! One job runs at a time: a second caller from another thread waits for the first to finish,
//! and a call made from inside a task (nested) runs inline on the calling thread.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker busy-waits for the next job: long enough to bridge the gaps between
/// the matmuls of one decode step (a few microseconds of norms and element-wise ops).
const SPIN_FOR: Duration = Duration::from_micros(50);
/// How long it then keeps polling while yielding its core, before it goes to sleep. Yielding
/// keeps the wake-up cheap without starving other threads when the machine is oversubscribed.
const YIELD_FOR: Duration = Duration::from_micros(1000);

thread_local! {
    /// Set while this thread runs pool tasks, so nested `run` calls go inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// The job being run, with its borrowed closure's lifetime erased.
type JobFn = dyn Fn(usize) + Sync + 'static;

/// `Shared::state` packs the job's epoch (high 32 bits), a "closed" flag and the number of
/// workers that joined it (low 31 bits).
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

struct Shared {
    /// Epoch, closed flag and joined count of the current job. Workers join a job with a CAS
    /// while it is open; the caller closes it once all tasks are handed out, and then waits only
    /// for the workers that joined. A worker that was descheduled (the machine is busy, or it
    /// was asleep) never holds the caller up: it finds the job closed and skips it.
    state: AtomicU64,
    /// The current job. Written by the caller only while no worker is inside a job.
    job: UnsafeCell<Option<&'static JobFn>>,
    n_tasks: AtomicUsize,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Workers that joined the current job and finished it.
    done: AtomicUsize,
    /// The first panic payload raised by a task on a worker, rethrown by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `job` is the only field that is not Sync by itself. It is written by the one caller
// holding `ThreadPool::caller` while no worker is inside a job (every worker that joined the
// previous job has reported done, and no worker can join a closed job), published by the
// release store of a new open `state`, and read by a worker only after its acquire CAS joined
// that job and before it reports done.
unsafe impl Sync for Shared {}

pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    /// Serializes callers from different threads.
    caller: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads (at least 1) in all, the caller included.
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("ferrollm-worker-{i}"))
                    .spawn(move || worker_loop(&shared))
                    .expect("spawn pool worker")
            })
            .collect();
        ThreadPool { n_threads, shared, caller: Mutex::new(()), workers }
    }

    /// The process-wide pool: `FERROLLM_NUM_THREADS` threads, or one per available core.
    pub fn global() -> &'static ThreadPool {
        static POOL: OnceLock<ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = std::env::var("FERROLLM_NUM_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            ThreadPool::new(n)
        })
    }

    pub fn num_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(task)` for every `task` in `0..n_tasks`, spread across the pool; returns when all are done.
    ///
    /// Tasks are handed out one at a time from a shared counter, so uneven tasks balance. A panic
    /// in a task is rethrown here after every thread has left the job.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 || IN_POOL.with(|c| c.get()) {
            (0..n_tasks).for_each(&f);
            return;
        }
        let _guard = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        let job: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: only the lifetime is changed. Workers use the reference only between joining
        // this job and reporting done; this function does not return (or unwind) before the job
        // is closed and every worker that joined has reported done, so `f` outlives every use.
        let job: &'static JobFn = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static JobFn>(job) };
        // SAFETY: we hold `caller`, and the previous job is closed with all its joiners done,
        // so no worker reads `job` now; the release store of `state` below publishes the write.
        unsafe { *shared.job.get() = Some(job) };
        shared.n_tasks.store(n_tasks, Ordering::Relaxed);
        shared.next.store(0, Ordering::Relaxed);
        shared.done.store(0, Ordering::Relaxed);
        let epoch = (shared.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        shared.state.store(epoch << 32, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }

        IN_POOL.with(|c| c.set(true));
        let mine = panic::catch_unwind(AssertUnwindSafe(|| run_tasks(shared, job)));
        IN_POOL.with(|c| c.set(false));

        // No task is left to hand out: close the job to late workers, wait for the joiners.
        let joined = (shared.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) != joined {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the job is closed and every worker that joined it is done; we hold `caller`.
        unsafe { *shared.job.get() = None };
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        let worker_panic = shared.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = worker_panic {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _l = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Takes tasks from the shared counter until none are left.
fn run_tasks(shared: &Shared, job: &JobFn) {
    let n = shared.n_tasks.load(Ordering::Relaxed);
    loop {
        let t = shared.next.fetch_add(1, Ordering::Relaxed);
        if t >= n {
            break;
        }
        job(t);
    }
}

fn worker_loop(shared: &Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then poll while yielding, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        let mut waited = Duration::ZERO;
        let mut s = shared.state.load(Ordering::Acquire);
        while s >> 32 == seen && !shared.shutdown.load(Ordering::Relaxed) {
            spins = spins.wrapping_add(1);
            if spins & 63 == 0 {
                waited = start.elapsed();
            }
            if waited < SPIN_FOR {
                std::hint::spin_loop();
            } else if waited < YIELD_FOR {
                std::thread::yield_now();
            } else {
                let mut l = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.state.load(Ordering::SeqCst) >> 32 == seen && !shared.shutdown.load(Ordering::SeqCst) {
                    l = shared.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            s = shared.state.load(Ordering::Acquire);
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = s >> 32;
        // Join the job unless the caller already closed it.
        let joined = loop {
            if s >> 32 != seen || s & CLOSED != 0 {
                break false;
            }
            match shared.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break true,
                Err(now) => s = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: our acquire CAS joined the open job, which synchronizes with the caller's
        // write of `job` before it published the epoch; the caller leaves `job` alone until we
        // report done.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| run_tasks(shared, job))) {
                shared.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
                // Stop handing out the rest of the job.
                shared.next.store(usize::MAX / 2, Ordering::Relaxed);
            }
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

/// A mutable slice that parallel tasks write in disjoint parts.
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _marker: PhantomData<&'a mut [T]>,
}

// SAFETY: the slice is only reached through `part`, whose caller guarantees that concurrent
// tasks take non-overlapping ranges, so no element is aliased mutably across threads.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}
// SAFETY: as above; the slice's elements are Send.
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        DisjointSlice { ptr: slice.as_mut_ptr(), len: slice.len(), _marker: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// No other live reference obtained from this `DisjointSlice` may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "DisjointSlice range out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        for threads in [1, 2, 3, 4] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 5, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, |t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads} n {n}");
            }
        }
    }

    #[test]
    fn many_back_to_back_jobs() {
        let pool = ThreadPool::new(2);
        let sum = AtomicU64::new(0);
        for _ in 0..20_000 {
            pool.run(4, |t| {
                sum.fetch_add(t as u64, Ordering::Relaxed);
            });
        }
        assert_eq!(sum.load(Ordering::Relaxed), 20_000 * 6);
    }

    #[test]
    fn survives_sleeping_workers() {
        let pool = ThreadPool::new(3);
        let sum = AtomicU64::new(0);
        for _ in 0..3 {
            std::thread::sleep(YIELD_FOR * 3);
            pool.run(10, |t| {
                sum.fetch_add(t as u64, Ordering::Relaxed);
            });
        }
        assert_eq!(sum.load(Ordering::Relaxed), 3 * 45);
    }

    #[test]
    fn nested_runs_go_inline() {
        let pool = ThreadPool::new(2);
        let sum = AtomicU64::new(0);
        pool.run(8, |_| {
            pool.run(8, |t| {
                sum.fetch_add(t as u64, Ordering::Relaxed);
            });
        });
        assert_eq!(sum.load(Ordering::Relaxed), 8 * 28);
    }

    #[test]
    fn concurrent_callers_are_serialized() {
        let pool = ThreadPool::new(2);
        let sum = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        pool.run(5, |t| {
                            sum.fetch_add(t as u64, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(sum.load(Ordering::Relaxed), 3 * 2000 * 10);
    }

    #[test]
    fn task_panic_reaches_caller_and_pool_still_works() {
        let pool = ThreadPool::new(2);
        for _ in 0..20 {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(64, |t| {
                    if t == 37 {
                        panic!("task 37");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let sum = AtomicU64::new(0);
        pool.run(10, |t| {
            sum.fetch_add(t as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
