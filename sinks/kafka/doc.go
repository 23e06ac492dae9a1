// Package kafkasink writes vigil's Kafka outputs (import path
// github.com/vigil-sec/vigil/sinks/kafka):
//
//   - revocation requests to "agent-revocations" (NewRevocations): key
//     agent_id, value the signed JSON request exactly as signed
//     (detector.Revocation.Body), headers request_id, kid, mode, action and
//     content-type: application/json;
//   - dead letters to "agent-events-dlq" (NewDeadLetters): key and value the
//     rejected message's, byte for byte up to 1 KiB of key and 16 KiB of
//     value (detector.NewDeadLetter cuts longer ones, so that a message as
//     large as the broker takes cannot make a dead letter too large to
//     write), headers reason (bounded: the decoder's reasons or "late"),
//     detail (the error, for people, at most 1 KiB), source_topic,
//     source_partition, source_offset, source_timestamp (RFC 3339, UTC),
//     value_size and value_sha256 (of the whole value, hex) and, when
//     something was cut, truncated: true (and key_size and key_sha256 when
//     the key was). A dead letter takes under 19 KiB: max_message_bytes,
//     and the topic's max.message.bytes, must be at least 32 KiB.
//
// Both are detector.Sinks built on a synchronous kafka-go Writer with
// RequiredAcks = all: Write returns nil only when the brokers have
// acknowledged every message of the batch, so the Runtime commits offsets
// only past outputs that are durable in Kafka. A message that is not
// acknowledged fails the Write (the caller retries the whole batch with
// backoff: backpressure, never a drop); broker refusals that retrying cannot
// change (a message larger than max_message_bytes, authorization, an invalid
// topic) wrap detector.ErrPermanent.
//
// Delivery is at least once: a retried batch, or a Write whose context ended
// after the Writer had sent the batch, is written again. Revocation requests
// carry a stable request_id (the same alert and action give the same id, in
// the request_id header and the body) and dead letters their source
// topic/partition/offset, so consumers deduplicate on those.
//
// Messages are partitioned by key with kafka-go's CRC32Balancer, the
// partitioner of librdkafka ("consistent_random") and of the clients built on
// it (kcat, confluent-kafka-*): one agent's revocation requests go to one
// partition, in the order vigil decided them, and a librdkafka producer
// would place the same key on the same partition. Dead letters without a key
// (a message that had none) are spread at random.
//
// New creates the topic when it is missing (partitions: as many as the
// events topic unless configured; the broker's default replication). The
// package deliberately does not consume: deduplication and acting on
// requests belong to the policy engine.
package kafkasink
