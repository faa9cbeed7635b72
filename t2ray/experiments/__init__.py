"""Pipelines that train and then score: base pretraining and evaluation, the seen and unseen
tables, the T2L table and the demo. Jobs and the CLI call these; methods never import them."""
