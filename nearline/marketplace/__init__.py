"""The demo's data: a synthetic job marketplace (members, jobs, taxonomies, labelled interactions) and the
stream of entity updates produced from it. Imports nothing else of nearline: training, the standardizers and
the demo read it.
"""
