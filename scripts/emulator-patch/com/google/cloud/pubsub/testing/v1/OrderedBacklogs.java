// What OrderedMessageBacklog.close() does once scripts/emulator-patch/tools/
// PatchOrderedBacklogClose.java has rewritten it (emulator jar 0.8.20).
//
// An ordered subscription keeps one MessageBacklog per ordering key, and each
// MessageBacklog owns a single-thread ScheduledExecutorService that wakes
// every second to expire leases. MessageBacklog.close() shuts that executor
// down, but the jar's OrderedMessageBacklog.close() is empty: deleting an
// ordered subscription leaves one live thread per ordering key it ever saw,
// until the emulator exits. This closes them.
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
}
