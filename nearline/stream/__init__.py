"""The nearline job's stages as plain Python, one batch at a time, runnable without Beam: the
stream-stream join (join), the dedupe decision (dedupe), and the stages that join, score, publish and commit
(pipeline). beam_jobs/nearline_job.py wires them into a Beam graph.

May import: ``nearline.core``, ``nearline.io``, ``nearline.registry``, ``nearline.inference``,
``nearline.standardize``. Never ``nearline.ops`` (local services) or the CLI.
"""
