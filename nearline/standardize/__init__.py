"""Feature standardization: raw text -> taxonomy ids. The processors are pure classes
(processors); runner runs one of them as its own process and consumer group over Kafka. A new standardizer is
a Processor subclass in processors plus its entry in the config.

May import: ``nearline.core``, ``nearline.io``, ``nearline.marketplace`` (its taxonomies).
"""
