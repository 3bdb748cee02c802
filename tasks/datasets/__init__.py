"""The embedded default datasets of the tasks: TFDS builders generated locally (no
download, ever), with the features of the real datasets they stand in for. Importing a
module registers its builder with TFDS; ``uvim_givt.data.embedded.ensure_built`` builds it
on first use."""
