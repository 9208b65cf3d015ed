"""``pgml.tune``: options, the snapshot and its split, the training worker process and
the catalog records of a run."""
