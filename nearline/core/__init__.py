"""Process-wide basics every other part of nearline may use: the stop request and retry policy
(lifecycle), logging set-up (logs), the checks a message must pass and their reason codes (validate), and the
Prometheus metrics (metrics).

May import: nothing of nearline but ``nearline.config`` and the package root. Everything else may import it.
"""
