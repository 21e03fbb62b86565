"""Tooling the runtime never imports: throwaway PostgreSQL and MariaDB servers, TLS files, a
local Secrets Manager and rotaproxy as a process, one implementation for tests, demo and bench."""
