//! Running work on store paths concurrently: a bounded pool of threads, in any order
//! ([`for_each`]) or in dependency order ([`in_dependency_order`]: a path's work starts
//! only when the work of every path it refers to is done).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use arca_store_core::StorePath;

/// Runs `work` on every item on up to `jobs` threads; the results in the items' order.
pub(crate) fn for_each<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(index) else { break };
                let result = work(item);
                *results[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was worked on")
        })
        .collect()
}

/// What [`in_dependency_order`] did.
#[derive(Debug)]
pub(crate) struct Outcome<E> {
    /// The paths whose work succeeded, in the order it finished.
    pub done: Vec<StorePath>,
    /// The paths whose work failed, and why (at most one without `keep_going`).
    pub failed: Vec<(StorePath, E)>,
}

/// Runs `work` on every path of `graph` (a path and the paths it refers to; references
/// outside the graph, and a path's reference to itself, are taken as done) on up to
/// `jobs` threads, a path only once its references' work is done. After an error, no
/// new work starts unless `keep_going`, in which case only the paths that need the
/// failed one (directly or not) are skipped; the work running always finishes.
pub(crate) fn in_dependency_order<E: Send>(
    graph: &BTreeMap<StorePath, BTreeSet<StorePath>>,
    jobs: usize,
    keep_going: bool,
    work: impl Fn(&StorePath) -> Result<(), E> + Sync,
) -> Outcome<E> {
    struct State<'a, E> {
        /// How many of each waiting path's references are not done yet.
        waiting: BTreeMap<&'a StorePath, usize>,
        ready: Vec<&'a StorePath>,
        running: usize,
        done: Vec<StorePath>,
        failed: Vec<(StorePath, E)>,
    }
    // Who refers to each path, so that finishing one releases its referrers.
    let mut referrers: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
    let mut waiting = BTreeMap::new();
    for (path, references) in graph {
        let pending = references
            .iter()
            .filter(|r| *r != path && graph.contains_key(*r))
            .inspect(|r| referrers.entry(*r).or_default().push(path))
            .count();
        waiting.insert(path, pending);
    }
    let ready: Vec<&StorePath> = waiting
        .iter()
        .filter(|(_, pending)| **pending == 0)
        .map(|(path, _)| *path)
        .rev()
        .collect();
    waiting.retain(|_, pending| *pending > 0);
    let state = Mutex::new(State {
        waiting,
        ready,
        running: 0,
        done: Vec::new(),
        failed: Vec::new(),
    });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let worker = || loop {
        let path = {
            let mut state = lock();
            loop {
                if !keep_going && !state.failed.is_empty() {
                    return;
                }
                if let Some(path) = state.ready.pop() {
                    state.running += 1;
                    break path;
                }
                if state.running == 0 {
                    // Nothing ready, nothing running: all done (a cycle, which a
                    // store's references cannot form, would also end here).
                    return;
                }
                state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = work(path);
        let mut state = lock();
        state.running -= 1;
        let ready_before = state.ready.len();
        match result {
            Ok(()) => {
                state.done.push(path.clone());
                for referrer in referrers.get(path).into_iter().flatten() {
                    let pending = state
                        .waiting
                        .get_mut(referrer)
                        .expect("a referrer waits until its references are done");
                    *pending -= 1;
                    if *pending == 0 {
                        state.waiting.remove(referrer);
                        state.ready.push(referrer);
                    }
                }
            }
            // Its referrers stay waiting for good: they are skipped.
            Err(error) => state.failed.push((path.clone(), error)),
        }
        // This worker takes one of the paths made ready itself (it stays warm, and a
        // chain runs on one thread); the others wake one worker each. When nothing is
        // left to wait for (all done, or stopped by an error), every worker wakes to
        // leave.
        let newly_ready = state.ready.len() - ready_before;
        let finished = state.running == 0 && state.ready.is_empty();
        if finished || (!keep_going && !state.failed.is_empty()) {
            changed.notify_all();
        } else {
            for _ in 1..newly_ready {
                changed.notify_one();
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs.clamp(1, graph.len().max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    let state = state.into_inner().unwrap_or_else(|e| e.into_inner());
    Outcome {
        done: state.done,
        failed: state.failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn references_finish_before_their_referrers() {
        // d -> c -> b -> a, d -> a, e alone.
        let mut graph = BTreeMap::new();
        graph.insert(p("a"), BTreeSet::from([p("a")]));
        graph.insert(p("b"), BTreeSet::from([p("a")]));
        graph.insert(p("c"), BTreeSet::from([p("b"), p("outside")]));
        graph.insert(p("d"), BTreeSet::from([p("c"), p("a")]));
        graph.insert(p("e"), BTreeSet::new());
        for jobs in [1, 2, 8] {
            let started = Mutex::new(Vec::new());
            let outcome = in_dependency_order(&graph, jobs, false, |path| {
                started.lock().unwrap().push(path.clone());
                Ok::<_, ()>(())
            });
            assert!(outcome.failed.is_empty());
            let order = outcome.done;
            assert_eq!(order.len(), 5);
            let position = |name| order.iter().position(|q| *q == p(name)).unwrap();
            assert!(position("a") < position("b"));
            assert!(position("b") < position("c"));
            assert!(position("c") < position("d"));
        }
    }

    #[test]
    fn an_error_stops_the_referrers_and_without_keep_going_everything() {
        // b needs a; c and d are independent of both (one job: a runs first).
        let mut graph = BTreeMap::new();
        graph.insert(p("a"), BTreeSet::new());
        graph.insert(p("b"), BTreeSet::from([p("a")]));
        graph.insert(p("c"), BTreeSet::new());
        graph.insert(p("d"), BTreeSet::from([p("c")]));
        let fail_a = |path: &StorePath| {
            if *path == p("a") {
                Err("a failed")
            } else {
                Ok(())
            }
        };
        let stopped = in_dependency_order(&graph, 1, false, fail_a);
        assert_eq!(stopped.failed, [(p("a"), "a failed")]);
        assert!(stopped.done.is_empty(), "{:?}", stopped.done);
        let going = in_dependency_order(&graph, 1, true, fail_a);
        assert_eq!(going.failed, [(p("a"), "a failed")]);
        assert_eq!(going.done, [p("c"), p("d")]);
    }

    #[test]
    fn for_each_keeps_the_order() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            for_each(&items, 7, |i| i * 2),
            (0..100).map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
