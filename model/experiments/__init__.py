"""``seqpred experiment``: memory and variants studies, runner, tables, plots. May import: train and below."""
