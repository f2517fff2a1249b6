//! Spreading CPU work over a few threads: the Automerge merges of a pulled page here, and of a
//! pushed batch on the server.

/// How many threads to use: the machine's parallelism, at most `max`.
pub fn threads(max: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(max)
        .max(1)
}

/// `work` applied to every item, on up to `threads` scoped threads that each take a
/// contiguous share, in item order. On one thread nothing is spawned. A share whose thread
/// panics gives no results: callers treat a missing result as work still to do.
pub fn map_in_shares<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let total = items.len();
    if threads <= 1 || total <= 1 {
        return items.into_iter().map(work).collect();
    }
    let mut shares: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (n, item) in items.into_iter().enumerate() {
        shares[n * threads / total].push(item);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || share.into_iter().map(work).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_item_order_from_every_share() {
        let items: Vec<u32> = (0..100).collect();
        let doubled = map_in_shares(items, 3, |n| n * 2);
        assert_eq!(doubled, (0..100).map(|n| n * 2).collect::<Vec<_>>());
        assert_eq!(map_in_shares(vec![7], 4, |n| n + 1), vec![8]);
        assert!(map_in_shares(Vec::<u32>::new(), 4, |n| n).is_empty());
    }

    #[test]
    fn a_panicking_share_gives_no_results_and_the_others_all_theirs() {
        let results = map_in_shares((0..40).collect(), 4, |n: u32| {
            assert_ne!(n, 15, "this share fails");
            n
        });
        // Shares of ten: the second (10..20) is lost, the rest arrive whole.
        let expected: Vec<u32> = (0..10).chain(20..40).collect();
        assert_eq!(results, expected);
    }
}
