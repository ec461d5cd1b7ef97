"""What consumers of the embeddings use: the Python client with its local cache (client) and
reads across data centers with failover (failover).

May import: ``nearline.core``, ``nearline.io``, ``nearline.registry``, ``nearline.inference``, ``nearline.ops``
(endpoint resolution).
"""
