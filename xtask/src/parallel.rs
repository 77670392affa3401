//! Running independent jobs (emulator boots) on a few threads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Applies `f` to every item on up to `workers` threads; the results come back in
/// the order of `items`.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was processed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_runs_everything() {
        let items: Vec<u64> = (0..50).collect();
        let out = map(&items, 3, |x| x * x);
        assert_eq!(out, items.iter().map(|x| x * x).collect::<Vec<_>>());
        assert!(map(&[] as &[u8], 4, |x| *x).is_empty());
        assert_eq!(map(&[7u8], 0, |x| *x + 1), vec![8]);
    }

    #[test]
    fn runs_jobs_at_the_same_time() {
        use std::time::{Duration, Instant};
        // Each of the first two jobs waits (up to 5 s) for the other to start: they
        // only meet if two workers run them at once.
        let started = AtomicUsize::new(0);
        let met = map(&[0u8, 1], 2, |_| {
            started.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(5);
            while started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            started.load(Ordering::SeqCst) == 2
        });
        assert_eq!(met, vec![true, true]);
    }
}
