"""uvim_givt: GIVT for dense prediction (UViM) and generation, in JAX."""

from uvim_givt import quiet as _quiet

# Before anything imports TensorFlow: its C++ start-up notices stay off the console.
_quiet.install()
