"""Task plugins (one module per task). Any ``tasks/`` folder on ``PYTHONPATH`` extends this
package, so a task can live outside the repository (docs/ARCHITECTURE.md, "Adding a task")."""

from pkgutil import extend_path

import uvim_givt  # noqa: F401  (first: the quiet TensorFlow start-up, see uvim_givt.quiet)

__path__ = extend_path(__path__, __name__)
