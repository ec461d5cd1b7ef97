"""Running the system locally: the private Redis and Apache Kafka broker (services), process helpers
(procs), Maven jars (jars), the local schema registry (schema_registry_server), the health/metrics HTTP server
(health) and the demo (demo).

May import: anything below it. The stages never import it.
"""
