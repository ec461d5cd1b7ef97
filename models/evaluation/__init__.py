"""Evaluating trained towers as a user of the embeddings would: the two-tower model and
evaluation data (twotower), downstream boosted-tree rankers with and without the embedding (downstream),
feature importance by permutation (importance), plots and the markdown report (report), and the entry point
over registered versions (run).
"""
