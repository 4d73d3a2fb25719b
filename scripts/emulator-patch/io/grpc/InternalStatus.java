// Replaces io.grpc.InternalStatus inside the Pub/Sub emulator jar (0.8.20).
//
// The jar bundles a grpc-core/grpc-netty that call
// InternalStatus.asRuntimeException(Status, Metadata, boolean), but a grpc-api
// that lacks it. Every client RST_STREAM (a cancelled streaming pull) then
// throws NoSuchMethodError before the emulator hears of the cancellation, so
// it keeps pushing messages to the dead stream and leases them there for a
// minute or more. scripts/services.sh puts this class ahead of the jar.
// Everything else is the jar's own code, unchanged.
package io.grpc;

public final class InternalStatus {
  private InternalStatus() {}

  public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
  public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

  public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(
      Status status, Metadata trailers) {
    return new InternalStatusRuntimeException(status, trailers);
  }

  // The method the bundled grpc-core expects (present in grpc-api >= 1.56).
  public static StatusRuntimeException asRuntimeException(
      Status status, Metadata trailers, boolean fillInStackTrace) {
    return fillInStackTrace
        ? new StatusRuntimeException(status, trailers)
        : new InternalStatusRuntimeException(status, trailers);
  }
}
