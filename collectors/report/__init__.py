"""From figures to verdicts: the one result model, the usage of an image and its chain, the
health policy, the exported metric catalogue, and collect(), the one pipeline every front end
runs."""
