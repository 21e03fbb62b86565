"""Credential sources: AWS Secrets Manager and SSM Parameter Store (through aioboto3), RDS IAM
auth tokens, and static credentials, one module each beside ``base`` (what they share),
``aws`` (clients and errors), ``rds_json`` (the credential JSON) and ``sources`` (which one a
pool gets). Import a name from the module that defines it: this package re-exports nothing.

A source hands out the current ``Credentials``; it caches them, shares one fetch among
concurrent callers, and turns every failure into a ``CredentialsError`` whose message names
the secret and the problem but never any part of the secret's value.
"""
