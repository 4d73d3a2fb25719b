// Replaces the Publisher service of the Pub/Sub emulator jar (0.8.20): the
// anonymous class PubsubGrpcServerAdapter$1, which only hands each call to
// the fake server. This one does the same, but first refuses what real
// Pub/Sub refuses and the stock emulator lets through (issue 31): more than
// 100 attributes, an attribute key over 256 bytes, a value over 1,024 bytes,
// an ordering key over 1,024 bytes, a message or a request over 10 MB. The answer is INVALID_ARGUMENT, as production gives,
// so the test bed is as strict as production. scripts/services.sh compiles
// every .java under scripts/emulator-patch and puts the classes ahead of the
// jar; everything else is the jar's own code. The REST API reaches the same
// service, so both transports are checked.
package com.google.cloud.pubsub.testing.v1;

import com.google.protobuf.Empty;
import com.google.pubsub.v1.DeleteTopicRequest;
import com.google.pubsub.v1.GetTopicRequest;
import com.google.pubsub.v1.ListTopicSnapshotsRequest;
import com.google.pubsub.v1.ListTopicSnapshotsResponse;
import com.google.pubsub.v1.ListTopicSubscriptionsRequest;
import com.google.pubsub.v1.ListTopicSubscriptionsResponse;
import com.google.pubsub.v1.ListTopicsRequest;
import com.google.pubsub.v1.ListTopicsResponse;
import com.google.pubsub.v1.PublishRequest;
import com.google.pubsub.v1.PublishResponse;
import com.google.pubsub.v1.PublisherGrpc;
import com.google.pubsub.v1.PubsubMessage;
import com.google.pubsub.v1.Topic;
import com.google.pubsub.v1.UpdateTopicRequest;
import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.stub.StreamObserver;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.Map;

class PubsubGrpcServerAdapter$1 extends PublisherGrpc.PublisherImplBase {
  // https://cloud.google.com/pubsub/quotas#resource_limits
  static final int MAX_ATTRIBUTES = 100;
  static final int MAX_ATTRIBUTE_KEY_BYTES = 256;
  static final int MAX_ATTRIBUTE_VALUE_BYTES = 1024;
  static final int MAX_ORDERING_KEY_BYTES = 1024;
  static final int MAX_MESSAGE_BYTES = 10_000_000;
  static final int MAX_REQUEST_BYTES = 10_000_000;

  private final PubsubGrpcServerAdapter adapter;
  private volatile PublisherService publisher;

  // The adapter builds this service in a field initializer, before its
  // constructor stores the fake server: look the server up on first use.
  PubsubGrpcServerAdapter$1(PubsubGrpcServerAdapter adapter) {
    this.adapter = adapter;
  }

  private PublisherService publisher() {
    PublisherService p = publisher;
    if (p != null) {
      return p;
    }
    try {
      Field f = PubsubGrpcServerAdapter.class.getDeclaredField("publisher");
      f.setAccessible(true);
      p = (PublisherService) f.get(adapter);
    } catch (ReflectiveOperationException e) {
      throw new IllegalStateException("emulator patch: PubsubGrpcServerAdapter.publisher not found", e);
    }
    publisher = p;
    return p;
  }

  private static int utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8).length;
  }

  private static StatusException invalid(String what) {
    return Status.INVALID_ARGUMENT
        .withDescription(what + " Refer to https://cloud.google.com/pubsub/quotas for more information.")
        .asException();
  }

  static void checkLimits(PublishRequest request) throws StatusException {
    if (request.getSerializedSize() > MAX_REQUEST_BYTES) {
      throw invalid("The request is larger than " + MAX_REQUEST_BYTES + " bytes.");
    }
    for (PubsubMessage m : request.getMessagesList()) {
      if (m.getAttributesCount() > MAX_ATTRIBUTES) {
        throw invalid("A message has " + m.getAttributesCount()
            + " attributes, but the maximum allowed is " + MAX_ATTRIBUTES + ".");
      }
      for (Map.Entry<String, String> a : m.getAttributesMap().entrySet()) {
        int k = utf8(a.getKey());
        if (k > MAX_ATTRIBUTE_KEY_BYTES) {
          throw invalid("One of the attributes in the request has a key that is too long. The length is "
              + k + " bytes, but the maximum allowed is " + MAX_ATTRIBUTE_KEY_BYTES + ".");
        }
        int v = utf8(a.getValue());
        if (v > MAX_ATTRIBUTE_VALUE_BYTES) {
          throw invalid("One of the attributes in the request has a value that is too long. The length is "
              + v + " bytes, but the maximum allowed is " + MAX_ATTRIBUTE_VALUE_BYTES + ".");
        }
      }
      if (utf8(m.getOrderingKey()) > MAX_ORDERING_KEY_BYTES) {
        throw invalid("The ordering key is longer than " + MAX_ORDERING_KEY_BYTES + " bytes.");
      }
      if (m.getSerializedSize() > MAX_MESSAGE_BYTES) {
        throw invalid("A message is larger than " + MAX_MESSAGE_BYTES + " bytes.");
      }
    }
  }

  @Override
  public void publish(PublishRequest request, StreamObserver<PublishResponse> observer) {
    try {
      checkLimits(request);
      observer.onNext(publisher().publish(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void createTopic(Topic request, StreamObserver<Topic> observer) {
    try {
      observer.onNext(publisher().createTopic(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void updateTopic(UpdateTopicRequest request, StreamObserver<Topic> observer) {
    try {
      observer.onNext(publisher().updateTopic(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void getTopic(GetTopicRequest request, StreamObserver<Topic> observer) {
    try {
      observer.onNext(publisher().getTopic(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void listTopics(ListTopicsRequest request, StreamObserver<ListTopicsResponse> observer) {
    try {
      observer.onNext(publisher().listTopics(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void listTopicSubscriptions(
      ListTopicSubscriptionsRequest request, StreamObserver<ListTopicSubscriptionsResponse> observer) {
    try {
      observer.onNext(publisher().listTopicSubscriptions(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void listTopicSnapshots(
      ListTopicSnapshotsRequest request, StreamObserver<ListTopicSnapshotsResponse> observer) {
    try {
      observer.onNext(publisher().listTopicSnapshots(request));
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }

  @Override
  public void deleteTopic(DeleteTopicRequest request, StreamObserver<Empty> observer) {
    try {
      publisher().deleteTopic(request);
      observer.onNext(Empty.getDefaultInstance());
      observer.onCompleted();
    } catch (StatusException e) {
      observer.onError(e);
    }
  }
}
