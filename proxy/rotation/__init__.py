"""Rotating the database password a Secrets Manager secret holds, for PostgreSQL and MySQL/MariaDB,
single-user or alternating-users: ``steps`` runs the four-step contract, ``postgres`` and ``mysql``
hold each engine's SQL, ``command`` and ``aws_lambda`` are the two ways in.

The one name re-exported here is the Lambda handler: deploy/cloudformation and the docs name it
``proxy.rotation.lambda_handler``, and a deployed function keeps that Handler setting. Import
everything else from the module that defines it.
"""

from proxy.rotation.aws_lambda import lambda_handler

__all__ = ["lambda_handler"]
