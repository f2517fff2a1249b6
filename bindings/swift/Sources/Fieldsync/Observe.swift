// Query results kept current, as an AsyncSequence: the Swift side of Kotlin's
// `Store.observe` Flow, for SwiftUI's `.task { for try await ... }` and the like.
import Foundation

extension Store {
    /// The records of `collection` matching `query`, now and again after every commit that
    /// changes a record the query's filter matches (before or after the change), locally or
    /// by a sync. The first results come once subscribed, so no write falls between them and
    /// the subscription.
    ///
    /// - Results equal to the last ones yielded are not yielded again.
    /// - Buffering is bounded: commits that arrive while the query runs are coalesced into one
    ///   more query, and a consumer that falls behind gets only the latest results
    ///   (`.bufferingNewest(1)`): results in between may be skipped, never the latest.
    /// - The queries run on the store's queue, off the consumer's actor.
    /// - The sequence throws when the collection or filter is not valid (`unknownCollection`,
    ///   `invalidQuery`, ...) or a query fails; it never ends otherwise. The subscription is
    ///   cancelled when the consumer stops iterating (its task cancelled, or a `break`).
    public func observe(collection: String, query: Query = Query(filter: .all))
        -> AsyncThrowingStream<[Record], Error>
    {
        let (results, output) = AsyncThrowingStream.makeStream(
            of: [Record].self, throwing: Error.self, bufferingPolicy: .bufferingNewest(1))
        // One pending signal at most: it stands for every commit since the last query began.
        let (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let subscription: Subscription
        do {
            subscription = try subscribe(collection: collection, filter: query.filter) { _ in
                // Discarded: a dropped signal is one already pending.
                _ = signal.yield()
            }
        } catch {
            output.finish(throwing: error)
            return results
        }
        // Detached, so that comparing results does not run on the consumer's actor.
        let worker = Task.detached { [self] in
            var last: [Record]?
            for await _ in signals {
                do {
                    let records = try await self.query(collection: collection, query: query)
                    if records != last {
                        last = records
                        output.yield(records)
                    }
                } catch {
                    output.finish(throwing: error)
                    return
                }
            }
        }
        output.onTermination = { _ in
            subscription.cancel()
            signal.finish()
            worker.cancel()
        }
        // The first query, once the handler above is set: the worker can end the stream only
        // after a query.
        signal.yield()
        return results
    }
}
