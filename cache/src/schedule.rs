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

/// Runs `work` on every path of `graph` (a path and the paths it refers to; references
/// outside the graph, and a path's reference to itself, are taken as done) on up to
/// `jobs` threads, a path only once its references' work is done. After the first
/// error no new work starts; the work running finishes, and the error is returned. On
/// success, the paths in the order their work finished.
pub(crate) fn in_dependency_order<E: Send>(
    graph: &BTreeMap<StorePath, BTreeSet<StorePath>>,
    jobs: usize,
    work: impl Fn(&StorePath) -> Result<(), E> + Sync,
) -> Result<Vec<StorePath>, E> {
    struct State<'a, E> {
        /// How many of each waiting path's references are not done yet.
        waiting: BTreeMap<&'a StorePath, usize>,
        ready: Vec<&'a StorePath>,
        running: usize,
        done: Vec<StorePath>,
        error: Option<E>,
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
        error: None,
    });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let worker = || loop {
        let path = {
            let mut state = lock();
            loop {
                if state.error.is_some() {
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
            Err(error) => {
                state.error.get_or_insert(error);
            }
        }
        changed.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs.clamp(1, graph.len().max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    let state = state.into_inner().unwrap_or_else(|e| e.into_inner());
    match state.error {
        Some(error) => Err(error),
        None => Ok(state.done),
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
            let order = in_dependency_order(&graph, jobs, |path| {
                started.lock().unwrap().push(path.clone());
                Ok::<_, ()>(())
            })
            .unwrap();
            assert_eq!(order.len(), 5);
            let position = |name| order.iter().position(|q| *q == p(name)).unwrap();
            assert!(position("a") < position("b"));
            assert!(position("b") < position("c"));
            assert!(position("c") < position("d"));
        }
    }

    #[test]
    fn an_error_stops_the_referrers() {
        let mut graph = BTreeMap::new();
        graph.insert(p("a"), BTreeSet::new());
        graph.insert(p("b"), BTreeSet::from([p("a")]));
        let ran = Mutex::new(Vec::new());
        let result = in_dependency_order(&graph, 4, |path| {
            ran.lock().unwrap().push(path.clone());
            if *path == p("a") {
                Err("a failed")
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("a failed"));
        assert_eq!(*ran.lock().unwrap(), [p("a")]);
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
