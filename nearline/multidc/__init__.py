"""Several data centers on one machine: a Kafka cluster and Redis per DC with MirrorMaker 2
between them (clusters), and the multi-DC demo (demo).

May import: anything but the CLI.
"""
