"""The edges: the only modules that talk to Kafka through kafka-python (kafka_io, delivery, group_watchdog) or
to Redis (store), or that define bytes on the wire (codec: Avro; embedding_messages, snapshot, deadletter: the
contracts of the output topics), plus which input offsets may be committed (offsets). Swapping a client
touches one module here; the backfill's librdkafka reader and producer are in nearline.offline.

May import: ``nearline.core``, ``nearline.config``. Never the stages, services or the CLI.
"""
