"""The engine-agnostic connection pool, one job per module: ``pool`` (the Pool: borrowing,
releasing, lifecycle), ``states`` (the transition table and the counts), ``queue`` (who waits),
``keep`` (what idle clients keep), ``reset`` (resets after release), ``generations``
(credentials and rotation), ``janitor`` (periodic upkeep) and ``stats`` (what it shows).
Import a name from the module that defines it: this package re-exports nothing.
"""
