// What OrderedMessageBacklog.close() and onStreamingPullCompleted() do once
// scripts/emulator-patch/tools/PatchOrderedBacklogClose.java has rewritten
// them (emulator jar 0.8.20).
//
// close():
// An ordered subscription keeps one MessageBacklog per ordering key, and each
// MessageBacklog owns a single-thread ScheduledExecutorService that wakes
// every second to expire leases. MessageBacklog.close() shuts that executor
// down, but the jar's OrderedMessageBacklog.close() is empty: deleting an
// ordered subscription leaves one live thread per ordering key it ever saw,
// until the emulator exits. This closes them.
//
// onStreamingPullCompleted(): the jar forgets at once which stream each
// ordering key was assigned to when that stream ends, so a key whose messages
// were outstanding on a stream that died (a subscriber SIGKILLed) goes to
// another stream at once and its later messages are delivered while the
// earlier ones are still leased to the dead one; they come back when their
// lease runs out, after the later ones. Real Pub/Sub keeps a key's order
// across a subscriber's death. Here a key stays assigned to the ended stream
// while its backlog still has messages out, so it moves on only once they
// expire, and RESEND_ALL puts them back ahead of the rest, in order.
package com.google.cloud.pubsub.testing.v1;

import java.util.Map;

final class OrderedBacklogs {
  private OrderedBacklogs() {}

  /** Closes every per-key backlog of {@code owner}, under its lock as its other methods do. */
  static void closeAll(Object owner, Map<String, MessageBacklog> backlogs) {
    synchronized (owner) {
      for (MessageBacklog backlog : backlogs.values()) {
        backlog.close();
      }
    }
  }

  /**
   * Forgets the ended stream {@code streamId}: its index, and the keys assigned
   * to it that have no message out (the caller, a synchronized method,
   * holds the owner's lock and recalculates the indexes after).
   */
  static void streamEnded(
      Map<String, MessageBacklog> backlogs,
      Map<String, Long> keysToStreams,
      Map<Long, Integer> streamsToIndexes,
      long streamId) {
    streamsToIndexes.remove(streamId);
    keysToStreams
        .entrySet()
        .removeIf(
            e -> {
              if (e.getValue() != streamId) {
                return false;
              }
              MessageBacklog backlog = backlogs.get(e.getKey());
              return backlog == null || backlog.getDeliveredCount() == 0;
            });
  }
}
