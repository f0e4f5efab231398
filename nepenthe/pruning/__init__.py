"""Pruning: pure budget allocation, mask bookkeeping, and one small class per method, each registered where it is
defined (registry.register_method). Importing the method modules here fills the registry whenever any part of the
package is used."""

from . import lacoot, methods  # noqa: F401  (register their methods)
