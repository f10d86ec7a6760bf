//! Work over a big list split into shares run by a few threads at once ([`in_shares`]):
//! the fast path's index and a zone's signatures, the two parts of a big zone's
//! preparation whose work is per name.

/// Threads at most that share one job.
const MAX_THREADS: usize = 4;

/// `work` over `items`: on the calling thread when there are fewer than `from`, otherwise
/// over up to [`MAX_THREADS`] equal shares, each on a scoped thread of its own. The
/// results come in share order. A panic in a share is a bug: re-raised here, as one
/// thread would.
pub(super) fn in_shares<T: Sync, R: Send>(
    items: &[T],
    from: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let threads = if items.len() < from {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    };
    if threads == 1 {
        return vec![work(items)];
    }
    let chunk = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let running: Vec<_> = items
            .chunks(chunk)
            .map(|share| scope.spawn(move || work(share)))
            .collect();
        running
            .into_iter()
            .map(|part| part.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
